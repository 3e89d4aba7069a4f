"""The bad-input matrix against a real server: each case alone, then all of them mixed
into one concurrent burst of good requests. Every case gets its documented status and a
JSON error; the good requests around them get the same predictions as when sent alone;
no worker is restarted."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import predict
from training.tweets import split_tweets

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


def send(server, path, body, content_type):
    return predict(server, body, content_type, path=path or "/predictions/sentiment")


def check(case, response):
    name, _, _, _, status, kind = case
    assert response.status_code == status, f"{name}: {response.status_code} {response.text[:200]}"
    if status == 200:
        assert response.json()["label"] in ("negative", "positive"), name
        return
    if kind is None:  # TorchServe's own refusal before the handler: the status is the answer
        return
    answer = response.json()
    assert answer["code"] == status and answer["message"], name
    assert answer["type"] == kind, name


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_case_alone(server, case):
    check(case, send(server, *case[1:4]))


def test_all_cases_mixed_into_a_burst_of_good_requests(server):
    workers_before = server.client.worker_pids("sentiment")
    _, heldout = split_tweets()
    good = [t.text for t in heldout[:48]]
    alone = [predict(server, json.dumps({"text": t})).json() for t in good]

    jobs = [("good", i) for i in range(len(good))] + [("bad", i) for i in range(len(CASES))] * 2
    random.Random(7).shuffle(jobs)

    def run(job):
        kind, i = job
        if kind == "good":
            return job, predict(server, json.dumps({"text": good[i]}))
        return job, send(server, *CASES[i][1:4])

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(run, jobs))

    for (kind, i), response in results:
        if kind == "bad":
            check(CASES[i], response)
        else:
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["label"] == alone[i]["label"]
            assert answer["score"] == pytest.approx(alone[i]["score"], abs=1e-3)
    assert server.client.worker_pids("sentiment") == workers_before, "a worker was restarted"
