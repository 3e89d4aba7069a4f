"""The pod's TorchServe supervisor (server/container.py) rotating its keys on its own
schedule under load through the gateway: no request lost. Run as processes here (the
container test runs the image); the schedule is shortened to seconds, which is harsher
than production's twelve hours: more switches under the same load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.torchserve import TorchServeClient
from common.net import free_port
from common.paths import ROOT
from common.torchserve_files import KEY_FILE, read_keys
from helpers import ONE_WORKER_MODELS, SteadyLoad, gateway_in_front, poll

# the supervisor's TorchServe waited for (240 s at most), then rotations under load
pytestmark = pytest.mark.timeout(600)

CLIENTS = {"supervised": "supervised-client-key-0123456789"}


@dataclass
class Workdir:
    workdir: Path  # what gateway_in_front reads a node from


def supervisor_events(tmp_path) -> list[dict]:
    """The JSON lines of the supervisor's log so far (not one still being written)."""
    events = []
    for line in (tmp_path / "supervisor.log").read_text().splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def rotations(events: list[dict]) -> list[dict]:
    return [e for e in events if e["message"] == "rotated the inference key"]


def test_scheduled_rotations_under_load_lose_no_request(default_store, tmp_path):
    workdir = tmp_path / "torchserve"
    profile = tmp_path / "ports.properties"
    ports = {key: free_port() for key in ("inference", "management", "metrics")}
    profile.write_text(
        "".join(f"{key}_address=http://127.0.0.1:{port}\n" for key, port in ports.items())
        + f"grpc_inference_port={free_port()}\ngrpc_management_port={free_port()}\n"
        + f"models={ONE_WORKER_MODELS}\n"
    )
    log = open(tmp_path / "supervisor.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.container",
            "--workdir",
            str(workdir),
            "--profile",
            str(profile),
            "--rotate-every",
            "3",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=log,
        start_new_session=True,
        env=dict(os.environ, SENTIMENT_LOG_TO="files"),
    )
    try:
        deadline = time.monotonic() + 240
        while not (workdir / KEY_FILE).exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "supervisor.log").read_text()
            time.sleep(0.5)
        TorchServeClient.from_config(workdir / "config.properties", workdir / KEY_FILE).wait_until_ready(240)
        first_key = read_keys(workdir / KEY_FILE)["inference"]
        with gateway_in_front(Workdir(workdir), tmp_path / "gateway", CLIENTS) as gateway:
            # under load until the supervisor has rotated the key three times (every 3 s)
            with SteadyLoad(gateway, [lambda: CLIENTS["supervised"]], clients_per_key=8) as load:
                events = poll(lambda: supervisor_events(tmp_path), lambda e: len(rotations(e)) >= 3, timeout=60)
        assert len(rotations(events)) >= 3, [e["message"] for e in events]
        assert read_keys(workdir / KEY_FILE)["inference"] != first_key
        assert load.failed == [], f"{len(load.failed)} of {load.ok + len(load.failed)} failed: {load.failed[:5]}"
        assert load.ok > 200, f"only {load.ok} requests: the load did not run"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
