"""A request can fail only itself, against a real TorchServe.

Hostile bodies and headers (generated from a seed: bytes, surrogates, deep nesting, huge
numbers, other encodings, explanations, junk headers) are sent mixed into concurrent
bursts of good requests, round after round. Every good request must get exactly the
answer it gets alone; the hostile ones get their own answers (4xx JSON from the handler,
or TorchServe's own refusal before batching); no worker restarts.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from request_cases import hostile_requests

from training.tweets import split_tweets

ROUNDS = 8
GOOD_PER_ROUND = 15


def handler_refusal(response) -> bool:
    """A 4xx JSON error in the handler's (and TorchServe's) error shape."""
    if not 400 <= response.status_code < 500:
        return False
    body = response.json()
    return body["code"] == response.status_code and body["type"] and body["message"]


@pytest.fixture(scope="module")
def good_texts():
    _, heldout = split_tweets()
    return [t.text for t in heldout[200 : 200 + GOOD_PER_ROUND * 2]]


def test_hostile_requests_never_cost_a_good_request_its_answer(server, good_texts):
    headers = {"Authorization": f"Bearer {server.keys['inference']}"}
    url = server.url("inference", "/predictions/sentiment")

    def good(text):
        return requests.post(url, json={"text": text}, headers=headers, timeout=60)

    alone = {t: good(t).json() for t in good_texts}
    workers_before = server.client.worker_pids("sentiment")
    rng = random.Random(20261126)
    lost, misanswered, hostile_statuses, explain_answers = [], [], {}, {}
    for round_ in range(ROUNDS):
        texts = rng.sample(good_texts, GOOD_PER_ROUND)
        bad = hostile_requests(rng)
        jobs = [("good", t) for t in texts] + [("bad", case) for case in bad]
        rng.shuffle(jobs)

        def send(job):
            kind, what = job
            if kind == "good":
                return job, good(what)
            name, path, body, extra = what
            return job, requests.post(
                server.url("inference", path or "/predictions/sentiment"),
                data=body,
                headers={**headers, **extra},
                timeout=60,
            )

        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            for (kind, what), response in pool.map(send, jobs):
                if kind == "good":
                    ok = (
                        response.status_code == 200
                        and response.json()["label"] == alone[what]["label"]
                        and response.json()["score"] == pytest.approx(alone[what]["score"], abs=1e-3)
                    )
                    if not ok:
                        lost.append((round_, response.status_code, response.text[:200]))
                    continue
                name = what[0]
                hostile_statuses.setdefault(name, set()).add(response.status_code)
                if name in ("explain header on a prediction", "an explanation"):
                    explain_answers.setdefault(name, []).append(response.json())
                if name == "malformed form":
                    # TorchServe's frontend refuses it before batching (the gateway never passes it on)
                    if response.status_code not in (400, 500):
                        misanswered.append((name, response.status_code, response.text[:200]))
                elif response.status_code != 200 and not handler_refusal(response):
                    misanswered.append((name, response.status_code, response.text[:200]))
    assert lost == [], f"{len(lost)} of {ROUNDS * GOOD_PER_ROUND} good requests lost: {lost[:5]}"
    assert misanswered == []
    assert server.client.worker_pids("sentiment") == workers_before, "a worker was restarted"
    # the cases that used to take their batch down are refused as the client's fault
    for name in ("lone surrogate", "nested 10,000 deep", "a number of 5,000 digits"):
        assert hostile_statuses[name] == {400}, (name, hostile_statuses[name])
    assert hostile_statuses["an explanation"] == {200}  # served in the same batches, alone
    assert hostile_statuses["an explanation, lone surrogate"] == {400}
    # TorchServe sets the explain flag from the path, not from a client's header: a prediction
    # answered, shaped as the good requests' answers, not an explanation (which has more)
    assert hostile_statuses["explain header on a prediction"] == {200}
    prediction = {key: type(value) for key, value in next(iter(alone.values())).items()}
    assert set(prediction) == {"label", "score", "scores"}
    for answer in explain_answers["explain header on a prediction"]:
        assert {key: type(value) for key, value in answer.items()} == prediction, answer
    for answer in explain_answers["an explanation"]:
        assert "explanation" in answer and {key: type(answer[key]) for key in prediction} == prediction
