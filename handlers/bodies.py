"""A request's body as TorchServe hands it over, and the one check every text passes,
whatever the protocol it came in (native.py, kserve_v1.py, oip_v2.py parse each on these).

A request arrives from TorchServe as a dict of its parameters:
  - a raw body (JSON or text/plain) is under "body" (or "data" for a multipart upload),
    as bytes, as str (TorchServe decoded text) or as a parsed JSON value (TorchServe
    decoded application/json);
  - a form-encoded body (`curl -d text=...`) arrives as form fields.
Nothing here knows about TorchServe or torch, so tests call it without a server."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from errors import (
    EmptyBody,
    EmptyText,
    InvalidEncoding,
    InvalidInput,
    InvalidJSON,
    TextTooLong,
    TooManyTexts,
    UnsupportedMediaType,
)

BODY_KEYS = ("body", "data")
FORM_TEXT_KEY = "text"


@dataclass(frozen=True)
class Limits:
    max_texts_per_request: int = 32
    max_text_chars: int = 10_000


@dataclass(frozen=True)
class ParsedRequest:
    texts: tuple[str, ...]
    is_list: bool  # answered with a list (the client sent {"text": [...]})


def decode(raw: bytes | bytearray) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidEncoding(f"body is not valid UTF-8 (byte {e.start})") from None


def looks_like_json(text: str) -> bool:
    return text.lstrip()[:1] in ("{", "[")


SNIFFED_MEDIA_TYPES = ("", "multipart/form-data")


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def body_value(raw: Any, content_type: str | None) -> tuple[Any, bool]:
    """(value, is_json) of the body as TorchServe handed it over: plain text or parsed JSON.

    JSON media types are parsed, text/* is taken as it is; with no Content-Type (or a
    multipart field, which has none of its own) a body starting with { or [ is JSON.
    Anything else (XML, images, octet streams) is refused with 415.
    """
    kind = media_type(content_type)
    if isinstance(raw, (bytes, bytearray)) and not raw:
        raise EmptyBody("request body is empty")
    sniff = kind in SNIFFED_MEDIA_TYPES
    if not (sniff or kind.endswith("json") or kind.startswith("text/")):
        raise UnsupportedMediaType(
            f"Content-Type {kind[:80]!r} is not supported; send application/json or text/plain",
        )
    if isinstance(raw, (bytes, bytearray)):
        raw = decode(raw)
    if not isinstance(raw, str):
        return raw, True  # TorchServe already parsed the JSON (decode_input_request=true)
    is_json = kind.endswith("json") or (sniff and looks_like_json(raw))
    if not is_json:
        return raw, False
    try:
        return json.loads(raw), True
    except json.JSONDecodeError as e:
        raise InvalidJSON(
            f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
        ) from None
    except RecursionError:
        raise InvalidJSON("body is not valid JSON here: nested too deeply") from None
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise InvalidJSON("body is not valid JSON here: a number has too many digits") from None


def check_text(value: Any, where: str, limits: Limits) -> str:
    """`value` as one text of a request, or RequestError: a non-empty string of real text
    (no unpaired surrogates) within the length limit."""
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a string, not {json_type(value)}")
    if not value.strip():
        raise EmptyText(f"{where} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON can escape half a surrogate pair: "\ud800"
        raise InvalidInput(f"{where} has an unpaired surrogate at character {e.start}: not text") from None
    if len(value) > limits.max_text_chars:
        raise TextTooLong(
            f"{where} has {len(value)} characters; the limit is {limits.max_text_chars}",
        )
    return value


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def json_body(row: dict[str, Any], content_type: str | None = None) -> Any:
    """The JSON value of a request to an API that takes JSON only (KServe v1, OIP v2)."""
    for key in BODY_KEYS:
        if key in row:
            if media_type(content_type).startswith("text/"):
                raise UnsupportedMediaType("this API takes a JSON body: send 'Content-Type: application/json'")
            value, is_json = body_value(row[key], content_type)
            if not is_json:
                raise UnsupportedMediaType("this API takes a JSON body: send 'Content-Type: application/json'")
            return value
    if row or media_type(content_type) == "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("this API takes a JSON body, not a form")
    raise EmptyBody("request body is empty")


def json_object(value: Any, example: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"the body must be an object like {example}, not {json_type(value)}")
    return value


def no_unknown_fields(value: dict[str, Any], known: Sequence[str], where: str) -> None:
    unknown = [k for k in value if k not in known]
    if unknown:
        raise InvalidInput(f"{where} has {len(unknown)} unknown field(s); it takes {', '.join(known)}")


def count_texts(n: int, limits: Limits, what: str) -> None:
    if n == 0:
        raise EmptyText(f"{what} is empty")
    if n > limits.max_texts_per_request:
        raise TooManyTexts(f"{what} has {n} items; the limit is {limits.max_texts_per_request}")
