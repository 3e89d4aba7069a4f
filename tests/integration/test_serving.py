"""End to end: a real TorchServe serving the real default model over real HTTP."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import requests

from helpers import metric, metric_samples, predict
from training.tweets import LABELS, split_tweets


def test_the_readme_examples(server):
    r = predict(server, json.dumps({"text": "I love this"}))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["label"] == "positive"
    assert set(body["scores"]) == set(LABELS)
    assert body["score"] == max(body["scores"].values()) > 0.5
    assert predict(server, json.dumps({"text": "This is terrible"})).json()["label"] == "negative"


def test_plain_text_form_field_and_list(server):
    assert predict(server, "What a wonderful day", "text/plain").json()["label"] == "positive"
    form = requests.post(
        server.url("inference", "/predictions/sentiment"),
        data={"text": "I hate waiting in line"},
        headers={"Authorization": f"Bearer {server.keys['inference']}"},
        timeout=60,
    )
    assert form.status_code == 200 and form.json()["label"] == "negative"
    texts = ["I love it", "This is awful", "Best purchase ever", "Worst service I have had"]
    r = predict(server, json.dumps({"text": texts}))
    assert r.status_code == 200
    assert [x["label"] for x in r.json()] == ["positive", "negative", "positive", "negative"]


def test_served_model_is_accurate_on_held_out_tweets(server):
    _, heldout = split_tweets()
    sample = heldout[:256]
    correct = 0
    for start in range(0, len(sample), 32):
        chunk = sample[start : start + 32]
        r = predict(server, json.dumps({"text": [t.text for t in chunk]}))
        assert r.status_code == 200, r.text
        correct += sum(p["label"] == LABELS[t.label] for p, t in zip(r.json(), chunk, strict=True))
    assert correct / len(sample) >= 0.88


def test_concurrent_burst_with_malformed_requests_is_batched(server):
    """64 concurrent requests, every fourth one malformed: 64 answers, no 5xx, batches > 1."""
    before = metric_samples(server)
    workers_before = server.client.worker_pids("sentiment")
    _, heldout = split_tweets()
    bad_bodies = [
        (b'{"text": ', "application/json"),
        (b'{"text": ["ok", 3]}', "application/json"),
        (b"   ", "text/plain"),
        (b"\xc3\x28", "text/plain"),
    ]
    jobs = []
    for i in range(64):
        if i % 4 == 3:
            jobs.append(("bad",) + bad_bodies[(i // 4) % len(bad_bodies)])
        else:
            jobs.append(("good", json.dumps({"text": heldout[i].text}).encode(), "application/json"))

    def send(job):
        return job[0], predict(server, job[1], job[2])

    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(send, jobs))

    assert len(results) == 64
    for kind, r in results:
        assert r.status_code < 500, r.text
        if kind == "good":
            assert r.status_code == 200 and r.json()["label"] in LABELS
        else:
            assert 400 <= r.status_code < 500 and r.json()["type"] and r.json()["message"]

    after = metric_samples(server)
    batches = metric(after, "SentimentBatchSize_count") - metric(before, "SentimentBatchSize_count")
    requests_seen = metric(after, "SentimentBatchSize_sum") - metric(before, "SentimentBatchSize_sum")
    assert requests_seen == 64
    assert batches < 64, "every request ran alone: no dynamic batching happened"
    assert requests_seen / batches > 1.5
    assert server.client.worker_pids("sentiment") == workers_before, "a worker was restarted"


def test_shipped_model_settings_are_live(server):
    """What config.properties' models= entry and model-config.yaml say is what TorchServe
    serves with: neither is silently overridden by the other."""
    import yaml

    from common.paths import CONFIG, ROOT
    from common.torchserve_files import read_properties

    wanted = json.loads(read_properties(CONFIG)["models"])["sentiment"]["1.0"]
    wanted["responseTimeout"] = yaml.safe_load((ROOT / "model-config.yaml").read_text())["responseTimeout"]
    status, described = server.client.management("/models/sentiment")
    assert status == 200
    live = described[0]
    for key in ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers", "responseTimeout"):
        assert live[key] == wanted[key], key
    assert len(live["workers"]) == wanted["minWorkers"]


def test_the_frontend_runs_with_the_shipped_jvm_options(server):
    """config.properties' vmargs (the heap's bound, and an exit when it runs out) reach the
    JVM that TorchServe starts: psutil reads its command line."""
    from common.paths import CONFIG
    from common.torchserve_files import read_properties

    wanted = read_properties(CONFIG)["vmargs"].split()
    assert any(arg.startswith("-Xmx") for arg in wanted) and "-XX:+ExitOnOutOfMemoryError" in wanted
    args = server.frontend().cmdline()  # the one JVM, or RuntimeError
    assert all(arg in args for arg in wanted), args
