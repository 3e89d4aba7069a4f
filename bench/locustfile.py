"""Locust load test against a running TorchServe (e.g. one started by `make serve`).

    .venv/bin/pip install locust
    .venv/bin/locust -f bench/locustfile.py --host http://127.0.0.1:8080 --headless -u 32 -r 8 -t 1m

Each simulated user posts held-out tweets as {"text": ...} with the inference key read
from key_file.json (KEY_FILE overrides its path). Locust itself takes a good share of a
small machine's cores; bench/run.py uses a lighter generator for the published numbers.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from locust import HttpUser, between, task

from common.paths import ROOT
from training.tweets import split_tweets

KEY = json.loads(Path(os.environ.get("KEY_FILE", ROOT / "key_file.json")).read_text())["inference"]["key"]
TEXTS = [t.text for t in split_tweets()[1]]


class SentimentUser(HttpUser):
    wait_time = between(0, 0.05)

    @task
    def predict(self):
        with self.client.post(
            "/predictions/sentiment",
            json={"text": random.choice(TEXTS)},
            headers={"Authorization": f"Bearer {KEY}"},
            name="/predictions/sentiment",
            catch_response=True,
        ) as response:
            if response.status_code != 200 or "label" not in response.json():
                response.failure(f"status {response.status_code}")
