"""Helpers shared by the tests that talk to a real server."""

from __future__ import annotations

import json
import re

import requests

# config.properties' models= for a lighter server: the default model with one worker
ONE_WORKER_MODELS = json.dumps({"sentiment": {"1.0": {
    "defaultVersion": True, "marName": "sentiment.mar", "minWorkers": 1, "maxWorkers": 1,
    "batchSize": 8, "maxBatchDelay": 2}}})


def predict(server, data, content_type="application/json", token=None, path="/predictions/sentiment"):
    headers = {"Authorization": f"Bearer {token or server.keys['inference']}"}
    if content_type:
        headers["Content-Type"] = content_type
    return requests.post(server.url("inference", path), data=data, headers=headers, timeout=60)


def metric_samples(server) -> dict[str, float]:
    """{'name{labels}': value} scraped from the metrics port."""
    text = requests.get(server.url("metrics", "/metrics"), timeout=10).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def metric(samples: dict[str, float], name: str) -> float:
    """Sum of a metric's samples over all label sets."""
    pattern = re.compile(re.escape(name) + r"(\{|$)")
    return sum(v for k, v in samples.items() if pattern.match(k))
