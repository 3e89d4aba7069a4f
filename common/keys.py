"""Key rotation through TorchServe's token API, made so that a gateway in front loses no
request (the CLI is clients/keys.py; server/container.py rotates on a schedule).

TorchServe refuses the old inference key the moment it makes the new one, and rewrites
key_file.json (truncated, then written) for either rotation. So that a gateway in front
loses no request across the switch, a rotation holds a lock file (key_rotation.lock)
beside key_file.json from GUARD_BEFORE_S before its token call until the new key is in the
file. While the lock exists the gateway sends this node's requests guarded
(gateway/gateway.js `rotating`): one refused for its key (it carried the old one, or none,
read mid-rewrite) is sent again as soon as the file holds another key (or else once the
lock is gone). Nothing is held: a request goes on at once, and only one that crossed the
switch waits for it. Requests already on their way unguarded when the lock appears have
GUARD_BEFORE_S to reach TorchServe's check with the old key.

The lock says who took it and when: JSON {"pid", "host", "taken_ms"} (milliseconds since
the epoch), put in place whole (a temp file linked to its name), so that a reader never
sees half of one. A rotation holds it for at most LOCK_MAX_AGE_S (GUARD_BEFORE_S, the token
call's ROTATION_TIMEOUT_S and a margin); a lock older than that was left by a rotation that
was killed, and everyone ignores it: the gateway's guard (which takes this cap from the
rendered config, gateway/nginx.py), its readiness poller, and the next rotation, which
takes it over. A lock whose file holds no readable time counts from its mtime.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path

from common.net import http
from common.torchserve_files import expiries

KINDS = ("inference", "management")
ROTATION_LOCK = "key_rotation.lock"  # gateway/nginx.py and gateway.js know this name too
# Requests that read the old key before the lock appeared go on unguarded: this long to
# reach TorchServe's check (0.2 s lost one in a few thousand on a loaded CI machine).
# Nothing waits for it but the rotation itself.
GUARD_BEFORE_S = 2.0
ROTATION_TIMEOUT_S = 5.0  # the token API call's timeout (each connect and read of it)
LOCK_MARGIN_S = 1.0  # reading the key file, a busy machine's scheduling
# The longest a rotation can legitimately hold its lock: past it a lock is stale. The one
# source of this cap: the gateway's guard reads it from its config ($rotation_lock_max_age_ms).
LOCK_MAX_AGE_S = GUARD_BEFORE_S + ROTATION_TIMEOUT_S + LOCK_MARGIN_S


def lock_age(lock: Path, now: float | None = None) -> float | None:
    """Seconds since the lock at `lock` was taken (its recorded time, else its mtime; less
    than zero when that lies in the future), or None when there is no lock."""
    try:
        mtime = lock.stat().st_mtime
        content = lock.read_bytes()
    except FileNotFoundError:
        return None
    taken = mtime
    try:
        recorded = json.loads(content)["taken_ms"]
        if isinstance(recorded, int | float) and not isinstance(recorded, bool) and math.isfinite(recorded):
            taken = recorded / 1000
    except (ValueError, TypeError, KeyError):  # no JSON, not an object: counts from its mtime
        pass
    return (time.time() if now is None else now) - taken


def lock_is_fresh(lock: Path, now: float | None = None) -> bool:
    """Whether a rotation may still hold this lock: it exists, and its time is less than
    LOCK_MAX_AGE_S away from now (either way: a clock set back does not keep one forever)."""
    age = lock_age(lock, now)
    return age is not None and -LOCK_MAX_AGE_S <= age <= LOCK_MAX_AGE_S


def take_lock(directory: Path) -> tuple[Path, bytes]:
    """Take the rotation lock in `directory` (beside key_file.json): (its path, what it
    holds, for release_lock). A stale lock is taken over; a fresh one is another rotation's,
    and RuntimeError says whose."""
    lock = Path(directory) / ROTATION_LOCK
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "taken_ms": int(time.time() * 1000)}
    content = json.dumps(owner).encode()
    tmp = lock.with_name(f".{ROTATION_LOCK}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        try:
            os.link(tmp, lock)  # whole, and only if no one holds it
        except FileExistsError:
            if lock_is_fresh(lock):
                raise RuntimeError(f"another key rotation holds {lock}: {_holder(lock)}") from None
            os.replace(tmp, lock)  # stale: left by a rotation that was killed
    finally:
        tmp.unlink(missing_ok=True)
    return lock, content


def release_lock(lock: Path, content: bytes) -> None:
    """Remove the lock if it is still the one take_lock wrote (not one that took it over)."""
    try:
        if lock.read_bytes() == content:
            lock.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def _holder(lock: Path) -> str:
    try:
        owner = json.loads(lock.read_text())
        return f"pid {owner['pid']} on {owner['host']}, {lock_age(lock) or 0:.1f}s ago"
    except (OSError, ValueError, TypeError, KeyError):
        return "an unknown holder"


def rotate(management_url: str, key_file: Path, kind: str) -> str:
    """Ask TorchServe for a new `kind` key; returns its expiry. key_file must be the file
    that TorchServe itself writes (it holds the API key and receives the new key)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    api_key = json.loads(Path(key_file).read_text())["API"]["key"]
    lock, content = take_lock(Path(key_file).parent)
    try:
        time.sleep(GUARD_BEFORE_S)
        status, body = http(
            f"{management_url}/token?type={kind}",
            "GET",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=ROTATION_TIMEOUT_S,
        )
        if status != 200:
            raise RuntimeError(f"TorchServe answered {status}: {body.decode(errors='replace')[:300]}")
        # TorchServe has written the file by the time it answers; read it whole once
        return expiries(key_file)[kind]
    finally:
        release_lock(lock, content)
