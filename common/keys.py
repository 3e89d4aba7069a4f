"""Key rotation through TorchServe's token API, held so that a gateway in front loses no
request (the CLI is clients/keys.py; server/container.py rotates on a schedule).

TorchServe refuses the old inference key the moment it makes the new one. So that a
gateway in front loses no request across the switch, an inference rotation holds a lock
file (key_rotation.lock) beside key_file.json from HOLD_BEFORE_S before the switch until
the new key is in the file (a management rotation holds it while TorchServe rewrites the
file, which holds the inference key too): the gateway holds requests for this node while the lock
exists, then sends them with the new key (gateway/gateway.js). Requests already on their
way to TorchServe when the lock appears have HOLD_BEFORE_S to arrive with the old key.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from common.net import http
from common.torchserve_files import expiries

KINDS = ("inference", "management")
ROTATION_LOCK = "key_rotation.lock"  # gateway/nginx.py and gateway.js know this name too
HOLD_BEFORE_S = 0.2


def rotate(management_url: str, key_file: Path, kind: str) -> str:
    """Ask TorchServe for a new `kind` key; returns its expiry. key_file must be the file
    that TorchServe itself writes (it holds the API key and receives the new key)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    api_key = json.loads(Path(key_file).read_text())["API"]["key"]
    # Either rotation rewrites the whole file (truncated, then written): a gateway reading
    # it meanwhile could find no key. The lock holds its requests for either; only an
    # inference rotation changes the key in flight, and waits for requests on their way.
    lock = Path(key_file).parent / ROTATION_LOCK
    os.close(os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600))
    if kind == "inference":
        time.sleep(HOLD_BEFORE_S)
    try:
        status, body = http(
            f"{management_url}/token?type={kind}", "GET", headers={"Authorization": f"Bearer {api_key}"}
        )
        if status != 200:
            raise RuntimeError(f"TorchServe answered {status}: {body.decode(errors='replace')[:300]}")
        # TorchServe has written the file by the time it answers; read it whole once
        return expiries(key_file)[kind]
    finally:
        lock.unlink(missing_ok=True)
