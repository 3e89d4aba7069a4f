"""Requests the tests send, shared by their modules: the bad-input table (each case with
its documented answer) and the hostile requests of a seed."""

from __future__ import annotations

import json
import random

JSON = "application/json"
TEXT = "text/plain"
MIB = 1 << 20

# (case, path, body, Content-Type, status, error type; None: a prediction is expected)
CASES = [
    ("empty body", "", b"", JSON, 400, "EmptyBody"),
    ("empty text", "", b'{"text": ""}', JSON, 400, "EmptyText"),
    ("whitespace only", "", json.dumps({"text": " \n\t "}).encode(), JSON, 400, "EmptyText"),
    ("whitespace plain body", "", b"   ", TEXT, 400, "EmptyText"),
    ("empty list", "", b'{"text": []}', JSON, 400, "EmptyText"),
    ("invalid JSON", "", b'{"text": ', JSON, 400, "InvalidJSON"),
    ("JSON not an object", "", b'["I love this"]', JSON, 400, "InvalidInput"),
    ("no text field", "", b'{"txt": "I love this"}', JSON, 400, "InvalidInput"),
    ("extra field", "", b'{"text": "I love this", "lang": "en"}', JSON, 400, "InvalidInput"),
    ("text of the wrong type", "", b'{"text": 42}', JSON, 400, "InvalidInput"),
    ("text an object", "", b'{"text": {"a": 1}}', JSON, 400, "InvalidInput"),
    ("list with a non-string", "", b'{"text": ["ok", 3]}', JSON, 400, "InvalidInput"),
    ("too many texts", "", json.dumps({"text": ["ok"] * 33}).encode(), JSON, 413, "TooManyTexts"),
    ("text over max_text_chars", "", json.dumps({"text": "good " * 2001}).encode(), JSON, 413, "TextTooLong"),
    ("not UTF-8", "", b"\xff\xfe\xfd", TEXT, 400, "InvalidEncoding"),
    ("not UTF-8 inside JSON", "", b'{"text": "\xc3\x28"}', JSON, 400, "InvalidEncoding"),
    ("XML", "", b"<text>I love this</text>", "application/xml", 415, "UnsupportedMediaType"),
    (
        "form without a text field",
        "",
        b"comment=I+love+this",
        "application/x-www-form-urlencoded",
        415,
        "UnsupportedMediaType",
    ),
    ("body over max_request_size", "", b'{"text": "' + b"a" * (2 * MIB) + b'"}', JSON, 413, None),
    ("unknown model", "/predictions/no-such-model", b'{"text": "I love this"}', JSON, 404, "ModelNotFoundException"),
    (
        "unknown version",
        "/predictions/sentiment/9.9",
        b'{"text": "I love this"}',
        JSON,
        404,
        "ModelVersionNotFoundException",
    ),
    # accepted: far past max_length tokens is truncated, control characters and emoji are text
    ("long text, truncated", "", json.dumps({"text": "great movie " * 800}).encode(), JSON, 200, None),
    (
        "control characters and emoji",
        "",
        json.dumps({"text": "I love this \u0000\u0007\u200b 😍🎉"}).encode(),
        JSON,
        200,
        None,
    ),
]


def hostile_requests(rng: random.Random) -> list[tuple]:
    """(name, path, body, headers); the path is /predictions/sentiment unless it says otherwise."""
    json_ct = {"Content-Type": "application/json"}
    surrogate = rng.choice(["\\ud800", "\\udfff", "\\udc00", "\\ud83d"])
    cases = [
        ("lone surrogate", "", f'{{"text": "abc {surrogate}"}}'.encode(), json_ct),
        ("lone surrogate in a list", "", f'{{"text": ["fine", "x{surrogate}y"]}}'.encode(), json_ct),
        ("nested 10,000 deep", "", b'{"text": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", json_ct),
        ("nested 100,000 deep, unclosed", "", b"[" * 100_000, json_ct),
        ("a number of 5,000 digits", "", b'{"text": ' + b"9" * 5_000 + b"}", json_ct),
        ("infinity", "", b'{"text": 1e999999}', json_ct),
        ("NaN", "", b'{"text": NaN}', json_ct),
        ("UTF-16 JSON", "", '{"text": "I love this"}'.encode("utf-16"), json_ct),
        ("UTF-8 BOM", "", b'\xef\xbb\xbf{"text": "I love this"}', json_ct),
        ("random bytes", "", rng.randbytes(rng.randint(1, 2000)), {"Content-Type": "text/plain"}),
        ("random bytes, no type", "", rng.randbytes(rng.randint(1, 2000)), {}),
        (
            "random unicode",
            "",
            "".join(chr(rng.randint(1, 0x10FFFF)) for _ in range(200)).encode("utf-8", "surrogatepass"),
            {"Content-Type": "text/plain"},
        ),
        ("duplicate keys", "", b'{"text": "a", "text": {"deep": [1, 2, {"x": null}]}}', json_ct),
        ("explain header on a prediction", "", b'{"text": "I love this"}', {**json_ct, "explain": "True"}),
        ("an explanation", "/explanations/sentiment", b'{"text": "I love this"}', json_ct),
        ("an explanation, lone surrogate", "/explanations/sentiment", f'{{"text": "x {surrogate}"}}'.encode(), json_ct),
        (
            "junk header bytes",
            "",
            b'{"text": "I love this"}',
            {**json_ct, "X-Junk": rng.randbytes(40).replace(b"\r", b"").replace(b"\n", b"")},
        ),
        ("malformed form", "", b"text=I%20love%ZZthis", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("charset utf-16 label", "", b'{"text": "I love this"}', {"Content-Type": "application/json; charset=utf-16"}),
    ]
    rng.shuffle(cases)
    return cases
