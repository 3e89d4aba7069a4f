"""A small client for a running TorchServe: its addresses, its keys, readiness, predictions.

Addresses come from a config.properties, keys from the key_file.json TorchServe wrote
into the directory it was started from. Standard library only, so scripts that use it
need no extra packages.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

KEY_FILE = "key_file.json"


def read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def read_keys(key_file: Path) -> dict[str, str]:
    """{"inference": ..., "management": ..., "API": ...} from TorchServe's key_file.json."""
    data = json.loads(Path(key_file).read_text())
    return {name: entry["key"] for name, entry in data.items()}


def http(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
    timeout: float = 30,
) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class TorchServeClient:
    inference_url: str  # e.g. http://127.0.0.1:8080
    management_url: str
    metrics_url: str
    keys: dict[str, str]

    @classmethod
    def from_config(cls, config: Path, key_file: Path) -> "TorchServeClient":
        props = read_properties(config)
        return cls(
            props.get("inference_address", "http://127.0.0.1:8080"),
            props.get("management_address", "http://127.0.0.1:8081"),
            props.get("metrics_address", "http://127.0.0.1:8082"),
            read_keys(key_file),
        )

    def _auth(self, api: str) -> dict:
        return {"Authorization": f"Bearer {self.keys[api]}"}

    def management(self, path: str, method: str = "GET", timeout: float = 30) -> tuple[int, object]:
        status, body = http(self.management_url + path, method, headers=self._auth("management"), timeout=timeout)
        try:
            return status, json.loads(body or b"null")
        except json.JSONDecodeError:
            return status, body.decode(errors="replace")

    def predict(self, payload: object, model: str = "sentiment", timeout: float = 30) -> tuple[int, object]:
        """POST a JSON payload to /predictions/<model>; (status, parsed JSON answer)."""
        status, body = http(
            f"{self.inference_url}/predictions/{model}",
            "POST",
            json.dumps(payload).encode(),
            {**self._auth("inference"), "Content-Type": "application/json"},
            timeout,
        )
        return status, json.loads(body)

    def ready_models(self) -> dict[str, bool]:
        """{model name: at least one worker READY} for every registered model."""
        status, listing = self.management("/models")
        if status != 200:
            return {}
        result = {}
        for entry in listing.get("models", []):
            name = entry["modelName"]
            status, described = self.management(f"/models/{name}")
            result[name] = status == 200 and any(
                w.get("status") == "READY" for d in described for w in d.get("workers", [])
            )
        return result

    def wait_until_ready(self, timeout: float = 180.0, alive=lambda: None, models: bool = True) -> None:
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

    def worker_pids(self, model: str) -> list[int]:
        status, described = self.management(f"/models/{model}")
        if status != 200:
            return []
        return [int(w["pid"]) for d in described for w in d.get("workers", []) if w.get("pid")]
