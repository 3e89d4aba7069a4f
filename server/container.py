"""PID 1 of the TorchServe container: serve with the production profile, keep the keys
fresh, and stop on SIGTERM without losing a request.

    python -m server.container [--workdir /run/torchserve] [--profile FILE ...]
                               [--drain-marker FILE] [--grace 30]

- Config: the image's config.properties, then each --profile file's keys over it (the
  production profile: no model API, every port on loopback), written to
  <workdir>/config.properties. TorchServe runs from the workdir, so its key_file.json and
  logs/ land there: a volume the gateway container shares.
- Keys: TorchServe's keys expire after token_expiration_min; they are rotated through its
  token API every half of that, and the gateway, which watches key_file.json, follows.
  A rotation lock left in the workdir by a rotation killed mid-way is removed at start.
- Stop: TorchServe ignores SIGTERM as PID 1 would. On SIGTERM (or SIGINT) it keeps serving
  until the gateway in front has drained, which the gateway says by writing
  --drain-marker once its last request is answered, or until --grace seconds have passed;
  then TorchServe is stopped and this process exits 0. Without --drain-marker nothing
  can be in flight that the gateway did not send, and TorchServe stops at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from clients.torchserve import TorchServeClient
from common import events
from common.keys import ROTATION_LOCK, lock_age, rotate
from common.torchserve_files import KEY_FILE, read_properties
from server import launch


def log(message: str, **fields: object) -> None:
    events.log("supervisor", message, **fields)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m server.container", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TS_WORKDIR", "/run/torchserve")))
    p.add_argument(
        "--profile",
        type=Path,
        action="append",
        default=[],
        help="a properties file whose keys override config.properties (repeatable)",
    )
    p.add_argument("--drain-marker", type=Path, help="file the gateway writes once it has drained")
    p.add_argument("--grace", type=float, default=30.0, help="seconds to wait for the gateway's drain")
    p.add_argument(
        "--rotate-every", type=float, help="seconds between key rotations (default: half of token_expiration_min)"
    )
    return p


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM to TorchServe's process group (the JVM exits on it), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def clear_rotation_lock(workdir: Path) -> None:
    """Remove a key rotation lock left in the workdir (a volume that outlives this
    container): no rotation runs before this process starts one, so any lock there was
    left by a rotation killed mid-way, and would keep the gateway's poller off the node."""
    lock = workdir / ROTATION_LOCK
    age = lock_age(lock)
    if age is None:
        return
    try:
        owner = json.loads(lock.read_text())
        holder = {"pid": owner.get("pid"), "host": owner.get("host")} if isinstance(owner, dict) else {}
    except (OSError, ValueError):  # gone meanwhile, or a lock that records nothing
        holder = {}
    lock.unlink(missing_ok=True)
    log(f"removed a key rotation lock left behind ({age:.0f}s old)", **holder)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    workdir = args.workdir
    # TorchServe unpacks the archive into tmp/ at every start: a restarted container (its
    # emptyDir kept) would pile up a copy per restart until the pod is evicted
    shutil.rmtree(workdir / "tmp", ignore_errors=True)
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    overrides: dict[str, str] = {}
    for profile in args.profile:
        overrides.update(read_properties(profile))
    props = launch.derived_config(overrides)
    launch.write_properties(workdir / "config.properties", props)
    if args.drain_marker is not None:
        args.drain_marker.unlink(missing_ok=True)
    clear_rotation_lock(workdir)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())

    started = time.time()
    proc = subprocess.Popen(
        launch.command(workdir / "config.properties", foreground=True),
        cwd=workdir,
        env=launch.environment(workdir / "tmp"),
        start_new_session=True,
    )
    log(f"TorchServe started (pid {proc.pid}) from {workdir}")

    def alive() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"TorchServe exited with {proc.returncode}")

    try:
        launch.wait_for_keys(workdir, started, timeout=120, alive=alive)
        client = TorchServeClient.from_config(workdir / "config.properties", workdir / KEY_FILE)
        client.wait_until_ready(timeout=300, alive=alive)
    except (RuntimeError, TimeoutError) as e:
        log(f"TorchServe did not come up: {e}")
        stop_group(proc)
        return 1
    log(f"TorchServe ready in {time.time() - started:.1f}s")

    rotate_every = args.rotate_every or float(props.get("token_expiration_min", "60")) * 60 / 2
    next_rotation = time.monotonic() + rotate_every
    while not stopping.wait(1.0):
        if proc.poll() is not None:
            log(f"TorchServe exited with {proc.returncode}")
            return proc.returncode or 1
        if time.monotonic() >= next_rotation:
            for kind in ("inference", "management"):
                try:
                    rotate(props["management_address"], workdir / KEY_FILE, kind)
                    log(f"rotated the {kind} key")
                except (RuntimeError, OSError) as e:
                    log(f"rotating the {kind} key failed: {e}")
            next_rotation = time.monotonic() + rotate_every

    log("SIGTERM: serving on until the gateway has drained")
    deadline = time.monotonic() + args.grace
    if args.drain_marker is not None:
        while not args.drain_marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        log("the gateway has drained" if args.drain_marker.exists() else f"no drain after {args.grace:.0f}s")
    code = stop_group(proc)
    log(f"TorchServe stopped ({code})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
