"""Rotate TorchServe's keys through its token API, and show when they expire.

    python -m clients.keys show                 # each key's expiry, never the keys
    python -m clients.keys rotate inference     # a new inference key (or: management)

Keys expire after token_expiration_min (config.properties); rotate before that, e.g.
from cron. TorchServe writes the new key into key_file.json, where clients that follow
the README read it: clients.torchserve.TorchServeClient re-reads the file and retries once
when TorchServe refuses its key. The API key (which rotates the others) does not expire.

TorchServe refuses the old inference key the moment it makes the new one. So that a
gateway in front loses no request across the switch, an inference rotation holds a lock
file (key_rotation.lock) beside key_file.json from HOLD_BEFORE_S before the switch until
the new key is in the file: the gateway holds requests for this node while the lock
exists, then sends them with the new key (gateway/gateway.js). Requests already on their
way to TorchServe when the lock appears have HOLD_BEFORE_S to arrive with the old key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from clients.torchserve import KEY_FILE, http, read_properties
from server.paths import CONFIG

KINDS = ("inference", "management")
ROTATION_LOCK = "key_rotation.lock"  # gateway/nginx.py and gateway.js know this name too
HOLD_BEFORE_S = 0.2


def expiries(key_file: Path) -> dict[str, str]:
    data = json.loads(Path(key_file).read_text())
    return {name: entry.get("expiration time", "never") for name, entry in data.items()}


def rotate(management_url: str, key_file: Path, kind: str) -> str:
    """Ask TorchServe for a new `kind` key; returns its expiry. key_file must be the file
    that TorchServe itself writes (it holds the API key and receives the new key)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    api_key = json.loads(Path(key_file).read_text())["API"]["key"]
    lock = Path(key_file).parent / ROTATION_LOCK if kind == "inference" else None
    if lock is not None:
        os.close(os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600))
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
        if lock is not None:
            lock.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.keys", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("show", "rotate"))
    p.add_argument("kind", nargs="?", choices=KINDS, default="inference")
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--key-file", type=Path, default=Path(KEY_FILE))
    args = p.parse_args(argv)
    if args.command == "show":
        for name, expiry in expiries(args.key_file).items():
            print(f"{name}: expires {expiry}")
        return 0
    management_url = read_properties(args.config).get("management_address", "http://127.0.0.1:8081")
    try:
        expiry = rotate(management_url, args.key_file, args.kind)
    except (RuntimeError, OSError) as e:
        print(f"rotation failed: {e}", file=sys.stderr)
        return 1
    print(f"new {args.kind} key written to {args.key_file}; it expires {expiry}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
