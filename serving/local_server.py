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
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.client import KEY_FILE, TorchServeClient, read_keys, read_properties

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config.properties"
LOG_CONFIG = REPO / "log4j2.xml"
PORT_KEYS = {
    "inference_address": "inference",
    "management_address": "management",
    "metrics_address": "metrics",
    "grpc_inference_port": "grpc_inference",
    "grpc_management_port": "grpc_management",
}
REPO_PATH_KEYS = ("metrics_config",)  # paths in config.properties relative to the repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_properties(path: Path, props: dict[str, str]) -> None:
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))


@dataclass
class LocalTorchServe:
    model_store: Path
    overrides: dict[str, str] = field(default_factory=dict)  # config.properties keys
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None

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

    def start(self, timeout: float = 180.0, wait_for_models: bool = True) -> "LocalTorchServe":
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="torchserve-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)

        props = read_properties(CONFIG)
        for key, api in PORT_KEYS.items():
            self.ports[api] = free_port()
            if key.endswith("_port"):
                props[key] = str(self.ports[api])
            else:
                props[key] = self.url(api)
        props["model_store"] = str(Path(self.model_store).resolve())
        for key in REPO_PATH_KEYS:
            if key in props:
                props[key] = str(REPO / props[key])
        props.update(self.overrides)
        write_properties(self.workdir / "config.properties", props)

        env = dict(os.environ, TMPDIR=str(tmp), TEMP=str(tmp), TOKENIZERS_PARALLELISM="false")
        env.update(self.env)
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
        with open(self.workdir / "torchserve.out", "wb") as out:
            self.proc = subprocess.Popen(
                [os.path.join(venv_bin, "torchserve"), "--start", "--foreground", "--ncs",
                 "--ts-config", "config.properties", "--log-config", str(LOG_CONFIG)],
                cwd=self.workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as one
            )
        try:
            self._wait_for_keys(timeout)
            self.client = TorchServeClient(
                self.url("inference"), self.url("management"), self.url("metrics"),
                read_keys(self.workdir / KEY_FILE), self.workdir / KEY_FILE,
            )
            self.client.wait_until_ready(timeout, alive=self._check_alive, models=wait_for_models)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_keys(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._check_alive()
            try:
                read_keys(self.workdir / KEY_FILE)
                return
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                time.sleep(0.2)
        raise TimeoutError(f"TorchServe wrote no key_file.json in {timeout}s; see {self.workdir}")

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

    def __enter__(self) -> "LocalTorchServe":
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
