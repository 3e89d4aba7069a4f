"""Start and stop a private TorchServe for tests and benchmarks.

Each server gets its own working directory (where TorchServe writes key_file.json and
logs/), its own temp directory (where the launcher keeps its pid file and the workers
their sockets), free loopback ports, and a config.properties derived from the repo's
own, so tests exercise the shipped settings. It runs in a process group of its own and
is stopped by that group's id, never by process name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from clients.torchserve import TorchServeClient
from common.net import free_port
from common.paths import LOG_CONFIG
from common.torchserve_files import KEY_FILE
from server import launch


def models_setting(batch_size: int, max_batch_delay_ms: int, workers: int = 1, mar: str = "sentiment.mar") -> str:
    """A config.properties models= value: the model `sentiment` from `mar`, with these
    workers and batching."""
    entry = {"defaultVersion": True, "marName": mar, "minWorkers": workers, "maxWorkers": workers}
    return json.dumps({"sentiment": {"1.0": {**entry, "batchSize": batch_size, "maxBatchDelay": max_batch_delay_ms}}})


# the default model with one worker, for a lighter server (the tests' servers, the chaos
# testbed's three replicas on two cores)
ONE_WORKER_BATCH = 8
ONE_WORKER_MODELS = models_setting(ONE_WORKER_BATCH, 2)

PORT_KEYS = {
    "inference_address": "inference",
    "management_address": "management",
    "metrics_address": "metrics",
    "grpc_inference_port": "grpc_inference",
    "grpc_management_port": "grpc_management",
}


@dataclass
class LocalTorchServe:
    model_store: Path
    overrides: dict[str, str] = field(default_factory=dict)  # config.properties keys
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    log_config: Path = LOG_CONFIG  # log4j2's config (a benchmark may log metrics)

    proc: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)
    client: TorchServeClient | None = None

    def url(self, api: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[api]}{path}"

    @property
    def keys(self) -> dict[str, str]:
        return self.client.keys

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def start(self, timeout: float = 180.0, wait_for_models: bool = True) -> LocalTorchServe:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="torchserve-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)

        ports = {}
        for key, api in PORT_KEYS.items():
            self.ports[api] = free_port()
            ports[key] = str(self.ports[api]) if key.endswith("_port") else self.url(api)
        props = launch.derived_config({**ports, "model_store": str(Path(self.model_store).resolve()), **self.overrides})
        launch.write_properties(self.workdir / "config.properties", props)

        started = time.time()
        with open(self.workdir / "torchserve.out", "wb") as out:
            self.proc = subprocess.Popen(
                launch.command("config.properties", foreground=True, log_config=self.log_config),
                cwd=self.workdir,
                env=launch.environment(tmp, **self.env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as one
            )
        try:
            keys = launch.wait_for_keys(self.workdir, started, timeout, alive=self._check_alive)
            self.client = TorchServeClient(
                self.url("inference"),
                self.url("management"),
                self.url("metrics"),
                keys,
                self.workdir / KEY_FILE,
            )
            self.client.wait_until_ready(timeout, alive=self._check_alive, models=wait_for_models)
        except BaseException:
            self.stop()
            raise
        return self

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            out = (self.workdir / "torchserve.out").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"TorchServe exited with {self.proc.returncode}:\n{out}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the launcher leads its own group
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.time() + wait
            while time.time() < deadline and _group_alive(pgid, self.proc):
                time.sleep(0.2)
            if not _group_alive(pgid, self.proc):
                break
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None

    def frontend(self) -> psutil.Process:
        """TorchServe's frontend: the one JVM the launcher started (RuntimeError otherwise)."""
        assert self.proc is not None, "not started"
        jvms = [p for p in psutil.Process(self.proc.pid).children(recursive=True) if p.name() == "java"]
        if len(jvms) != 1:
            raise RuntimeError(f"{len(jvms)} java processes under TorchServe's launcher: {jvms}")
        return jvms[0]

    def __enter__(self) -> LocalTorchServe:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _group_alive(pgid: int, leader: subprocess.Popen) -> bool:
    """Whether a process of the group is still running (the leader's zombie does not count)."""
    leader.poll()  # reaps the leader once it has exited
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat[stat.rindex(")") + 2 :].split()[:3]
        if state != "Z" and int(group) == pgid:
            return True
    return False
