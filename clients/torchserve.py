"""A small client for a running TorchServe: its addresses, its keys, readiness, predictions.

Addresses come from a config.properties, keys from the key_file.json TorchServe wrote
into the directory it was started from. Standard library only, so scripts that use it
need no extra packages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.metrics import parse_samples
from common.net import http
from common.torchserve_files import read_keys, read_properties


def key_refused(status: int, body: bytes) -> bool:
    """TorchServe 0.12 answers a missing, wrong or expired key with 400 and this message."""
    return status == 400 and b"Token Authorization failed" in body


@dataclass
class TorchServeClient:
    inference_url: str  # e.g. http://127.0.0.1:8080
    management_url: str
    metrics_url: str
    keys: dict[str, str]
    key_file: Path | None = None  # where to re-read rotated keys from

    @classmethod
    def from_config(cls, config: Path, key_file: Path) -> TorchServeClient:
        props = read_properties(config)
        return cls(
            props.get("inference_address", "http://127.0.0.1:8080"),
            props.get("management_address", "http://127.0.0.1:8081"),
            props.get("metrics_address", "http://127.0.0.1:8082"),
            read_keys(key_file),
            Path(key_file),
        )

    def _call(
        self, api: str, url: str, method: str, body: bytes | None, headers: dict[str, Any], timeout: float
    ) -> tuple[int, bytes]:
        """One request with the `api` key; when TorchServe refuses the key and key_file.json
        holds another one (it was rotated), once more with the new key."""
        for attempt in range(2):
            key = self.keys[api]
            status, answer = http(url, method, body, {**headers, "Authorization": f"Bearer {key}"}, timeout)
            if attempt or not key_refused(status, answer) or self.key_file is None:
                break
            self.keys = read_keys(self.key_file)
            if self.keys[api] == key:
                break
        return status, answer

    def management(self, path: str, method: str = "GET", timeout: float = 30) -> tuple[int, object]:
        status, body = self._call("management", self.management_url + path, method, None, {}, timeout)
        try:
            return status, json.loads(body or b"null")
        except json.JSONDecodeError:
            return status, body.decode(errors="replace")

    def predict(self, payload: object, model: str = "sentiment", timeout: float = 30) -> tuple[int, object]:
        """POST a JSON payload to /predictions/<model>; (status, parsed JSON answer)."""
        status, body = self._call(
            "inference",
            f"{self.inference_url}/predictions/{model}",
            "POST",
            json.dumps(payload).encode(),
            {"Content-Type": "application/json"},
            timeout,
        )
        return status, json.loads(body)

    def ready_models(self) -> dict[str, bool]:
        """{model name: all its versions have their minWorkers (at least one) READY}."""
        status, listing = self.management("/models")
        if status != 200 or not isinstance(listing, dict):
            return {}
        result = {}
        for entry in listing.get("models", []):
            name = entry["modelName"]
            status, described = self.management(f"/models/{name}")
            result[name] = (
                status == 200
                and isinstance(described, list)
                and all(
                    sum(w.get("status") == "READY" for w in d.get("workers", [])) >= max(1, d.get("minWorkers", 1))
                    for d in described
                )
            )
        return result

    def wait_until_ready(
        self, timeout: float = 180.0, alive: Callable[[], None] = lambda: None, models: bool = True
    ) -> None:
        """Wait until the management API answers and, with `models`, until every registered
        model has a READY worker; `alive` raises if the server died."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            alive()
            try:
                if not models:
                    if self.management("/models")[0] == 200:
                        return
                else:
                    ready = self.ready_models()
                    if ready and all(ready.values()):
                        return
            except OSError:  # not listening yet
                pass
            time.sleep(0.5)
        raise TimeoutError(f"TorchServe not ready after {timeout:.0f}s")

    def metric_samples(self) -> dict[str, float]:
        """Every sample the metrics port serves now (it needs no key)."""
        status, body = http(self.metrics_url + "/metrics", timeout=10)
        if status != 200:
            raise RuntimeError(f"the metrics port answered {status}")
        return parse_samples(body.decode())

    def worker_pids(self, model: str, ready_only: bool = False) -> list[int]:
        status, described = self.management(f"/models/{model}")
        if status != 200 or not isinstance(described, list):
            return []
        return [
            int(w["pid"])
            for d in described
            for w in d.get("workers", [])
            if w.get("pid") and (w.get("status") == "READY" or not ready_only)
        ]
