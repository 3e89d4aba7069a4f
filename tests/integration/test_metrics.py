"""Handler metrics on the metrics port, and a real Prometheus scraping them."""

from __future__ import annotations

import json
import time

import pytest
import requests

from helpers import metric, metric_samples, poll, predict, settled
from testbed.prometheus import LocalPrometheus


def test_handler_metrics_count_what_was_sent(server):
    before = metric_samples(server)
    for _ in range(3):
        assert predict(server, json.dumps({"text": "I love it"})).status_code == 200
    assert predict(server, json.dumps({"text": ["good", "bad", "ugly", "fine"]})).status_code == 200
    for _ in range(2):
        assert predict(server, b'{"text": ').status_code == 400
    assert predict(server, b'{"text": ""}').status_code == 400

    # the handler's metrics reach the frontend after the answers (the worker logs them):
    # read once every request's batch is in, then once nothing more arrives
    batched = metric(before, "SentimentBatchSize_sum") + 7
    poll(lambda: metric(metric_samples(server), "SentimentBatchSize_sum"), until=lambda n: n >= batched, timeout=30)
    after = settled(lambda: metric_samples(server))

    def delta(name):
        return metric(after, name) - metric(before, name)

    assert delta("SentimentTexts") == 3 + 4
    assert delta_with_label(before, after, "SentimentRequestErrors", "InvalidJSON") == 2
    assert delta_with_label(before, after, "SentimentRequestErrors", "EmptyText") == 1
    requests_seen = delta("SentimentBatchSize_sum")
    assert requests_seen == 7  # every request, good or bad, went through a batch
    # texts per accepted request, as docs/metrics.md derives it
    assert delta("SentimentTexts") / (requests_seen - delta("SentimentRequestErrors")) == 7 / 4
    batches = delta("SentimentBatchSize_count")
    assert 1 <= batches <= 7
    for name in ("SentimentPreprocessSeconds", "SentimentInferenceSeconds"):
        assert delta(f"{name}_count") >= 1
        per_batch = delta(f"{name}_sum") / delta(f"{name}_count")
        assert 0 < per_batch < 10, name  # seconds, not milliseconds
    assert delta("ts_inference_requests_total") == 7


def delta_with_label(before, after, name, label_value):
    def total(samples):
        return sum(v for k, v in samples.items() if k.startswith(name + "{") and f'"{label_value}"' in k)

    return total(after) - total(before)


@pytest.fixture
def prometheus(server, tmp_path):
    with LocalPrometheus(tmp_path / "prometheus", {"local": server.ports["metrics"]}, with_rules=False) as prom:
        yield prom


def test_prometheus_scrapes_handler_metrics(server, prometheus):
    for text in ("I love it", "awful", "great stuff"):
        assert predict(server, json.dumps({"text": text})).status_code == 200
    deadline = time.time() + 60
    result = []
    while time.time() < deadline:
        result = prometheus.query("SentimentTexts")
        if result and float(result[0]["value"][1]) >= 3:
            break
        time.sleep(1)
    assert result, "Prometheus never scraped SentimentTexts"
    sample = result[0]
    assert sample["metric"]["ModelName"] == "sentiment"
    assert sample["metric"]["job"] == "sentiment"
    assert float(sample["value"][1]) >= 3
    targets = requests.get(prometheus.url + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"]
