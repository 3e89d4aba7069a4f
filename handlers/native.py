"""The service's own protocol: a plain text, {"text": "..."}, or {"text": [...]} (answered
with a list in the same order), or a form field named text (`curl -d text=...`); a
form without one is answered 415."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bodies import (
    BODY_KEYS,
    FORM_TEXT_KEY,
    Limits,
    ParsedRequest,
    body_value,
    check_text,
    decode,
    json_type,
    media_type,
)
from errors import EmptyBody, EmptyText, InvalidInput, TooManyTexts, UnsupportedMediaType

DEFAULT_LIMITS = Limits()
FORM_HINT = (
    "send JSON with 'Content-Type: application/json', plain text with "
    "'Content-Type: text/plain', or a form field named text"
)


def _from_json(value: Any, limits: Limits) -> ParsedRequest:
    if not isinstance(value, dict):
        raise InvalidInput(
            f'JSON body must be an object like {{"text": "..."}}, not {json_type(value)}',
        )
    if "text" not in value:
        raise InvalidInput('JSON body has no "text" field')
    unknown = [k for k in value if k != "text"]
    if unknown:
        raise InvalidInput(f'JSON body has {len(unknown)} unknown field(s); "text" is the only one')
    text = value["text"]
    if isinstance(text, list):
        if not text:
            raise EmptyText('"text" is an empty list')
        if len(text) > limits.max_texts_per_request:
            raise TooManyTexts(
                f'"text" has {len(text)} items; the limit is {limits.max_texts_per_request}',
            )
        return ParsedRequest(tuple(check_text(t, f'"text"[{i}]', limits) for i, t in enumerate(text)), True)
    return ParsedRequest((check_text(text, '"text"', limits),), False)


def parse_request(
    row: dict[str, Any], limits: Limits = DEFAULT_LIMITS, content_type: str | None = None
) -> ParsedRequest:
    """One TorchServe request (a dict of parameters) -> its texts, or RequestError.

    `content_type` is the request's Content-Type header.
    """
    return parse_with_extras(row, limits, content_type)[0]


def parse_with_extras(
    row: dict[str, Any], limits: Limits, content_type: str | None, extras: Sequence[str] = ()
) -> tuple[ParsedRequest, dict[str, Any]]:
    """parse_request, where a JSON object body may also hold the fields named in `extras`
    (returned beside the texts, unchecked)."""
    for key in BODY_KEYS:
        if key in row:
            value, is_json = body_value(row[key], content_type)
            if not is_json:
                return ParsedRequest((check_text(value, "body", limits),), False), {}
            found = {}
            if isinstance(value, dict) and extras:
                value = dict(value)
                found = {name: value.pop(name) for name in extras if name in value}
            return _from_json(value, limits), found
    if FORM_TEXT_KEY in row:
        value = row[FORM_TEXT_KEY]
        if isinstance(value, (bytes, bytearray)):
            value = decode(value)
        return ParsedRequest((check_text(value, 'form field "text"', limits),), False), {}
    if row or media_type(content_type) == "application/x-www-form-urlencoded":
        # curl -d without a Content-Type sends a form; TorchServe hands over its fields
        raise UnsupportedMediaType(f"body arrived form-encoded without a text field; {FORM_HINT}")
    raise EmptyBody("request body is empty")
