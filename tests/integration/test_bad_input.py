"""The bad-input matrix against a real server: each case alone, then all of them mixed
into one concurrent burst of good requests. Every case gets its documented status and a
JSON error; the good requests around them get the same predictions as when sent alone;
no worker is restarted."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from request_cases import CASES

from helpers import predict
from training.tweets import split_tweets


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
