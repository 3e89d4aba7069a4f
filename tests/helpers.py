"""Helpers shared by the tests that talk to a real server."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import requests
import yaml

from clients.metrics import total as metric
from common.paths import ARCHIVE_SCRIPT, MODEL_CONFIG, ROOT
from common.torchserve_files import KEY_FILE
from testbed.local_server import ONE_WORKER_MODELS

__all__ = [
    "keys_cli",
    "closed_by_server",
    "raw_exchange",
    "read_response",
    "ONE_WORKER_MODELS",
    "SteadyLoad",
    "gateway_answers",
    "gateway_in_front",
    "log_length",
    "handler_imports",
    "imported_modules",
    "poll",
    "settled",
    "metric",
    "metric_samples",
    "predict",
    "tiny_archive",
    "tiny_node",
]


T = TypeVar("T")


def poll(probe: Callable[[], T], until: Callable[[T], bool], timeout: float = 10.0, interval: float = 0.1) -> T:
    """probe() until until(its result) holds or `timeout` seconds pass; its last result,
    for the caller to assert on (instead of a fixed sleep before an exact assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if until(result) or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def settled(read: Callable[[], T], timeout: float = 10.0, interval: float = 0.3) -> T:
    """read() until two readings `interval` apart agree (a log or a count that stopped
    growing), or `timeout` seconds pass; the last reading."""
    last = read()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = read()
        if now == last:
            return now
        last = now
    return last


def imported_modules(path: Path) -> list[str]:
    """The top-level module of every absolute import statement in a file, at any depth
    (inside functions too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return names


def handler_imports(handler: Path) -> set[str]:
    """The modules of the handler's folder that `handler` imports, directly or through one
    another (every import statement, at any depth): what its archive must pack."""
    folder, found, todo = handler.parent, set(), [handler]
    while todo:
        for top in imported_modules(todo.pop()):
            if top not in found and (folder / f"{top}.py").is_file():
                found.add(top)
                todo.append(folder / f"{top}.py")
    return found


def predict(server, data, content_type="application/json", token=None, path="/predictions/sentiment"):
    headers = {"Authorization": f"Bearer {token or server.keys['inference']}"}
    if content_type:
        headers["Content-Type"] = content_type
    return requests.post(server.url("inference", path), data=data, headers=headers, timeout=60)


def metric_samples(server) -> dict[str, float]:
    """{'name{labels}': value} scraped from the metrics port."""
    return server.client.metric_samples()


def tiny_archive(model_dir, out, name, options=(), response_timeout=None, latency_ms=None):
    """archive.sh on a (tiny) model folder, with handler options, a response timeout, and,
    for a slow model, tests/slow_handler.py sleeping `latency_ms` after each batch."""
    cmd = [str(ARCHIVE_SCRIPT), "--model", str(model_dir), "--name", name, "--out", str(out)]
    for option in options:
        cmd += ["--option", option]
    config = yaml.safe_load(MODEL_CONFIG.read_text())
    if response_timeout is not None:
        config["responseTimeout"] = response_timeout
    if latency_ms is not None:
        import slow_handler

        config[slow_handler.SECTION] = {"latency_ms": latency_ms}
        cmd += ["--handler", slow_handler.__file__]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model-config.yaml"
        path.write_text(yaml.safe_dump(config))
        subprocess.run(
            [*cmd, "--config", str(path)],
            check=True,
            capture_output=True,
            timeout=300,
            env=dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"),
        )


@contextmanager
def tiny_node(model_dir, tmp: Path, options=(), overrides=None, latency_ms=None):
    """A real TorchServe of the tiny model archived as `sentiment` with these handler
    options (and `latency_ms` a batch: tiny_archive), its config.properties with
    `overrides`, in `tmp`; stopped on exit."""
    from testbed.local_server import LocalTorchServe

    store = tmp / "store"
    store.mkdir(parents=True)
    tiny_archive(model_dir, store / "sentiment.mar", "sentiment", options, latency_ms=latency_ms)
    node = LocalTorchServe(model_store=store, workdir=tmp / "node", overrides=overrides or {})
    node.start()
    try:
        yield node
    finally:
        node.stop()


@contextmanager
def gateway_in_front(servers, workdir: Path, clients: dict[str, str], **settings):
    """The nginx gateway in front of these TorchServes (one or several), on a free port;
    no rate (requests, explanations, failed authentications) or open-request limit to
    speak of unless `settings` give one (a test's burst
    may hold more requests open than the shipped per-key limit of 64 or per-node limit of
    24: those limits have their own tests in test_gateway_hardening)."""
    from common.net import free_port
    from gateway.nginx import Gateway, GatewaySettings, Node

    servers = servers if isinstance(servers, (list, tuple)) else [servers]
    lifted = {"rate_per_s": 1000, "burst": 1000, "conn_per_key": 1024, "conn_per_address": 1024}
    lifted |= {"explain_rate_per_s": 1000, "explain_burst": 1000, "auth_failure_rate_per_s": 1000}
    lifted |= {"auth_failure_burst": 1000}
    settings = {**lifted, "in_flight_per_node": 1024, **settings}
    gateway = Gateway(workdir, GatewaySettings(free_port(), clients, **settings)).start(
        [Node.from_dir(s.workdir) for s in servers]
    )
    try:
        yield gateway
    finally:
        gateway.stop()


def gateway_answers(gateway, since: int) -> list[tuple[str, int]]:
    """(node, status) of each prediction in the gateway's access log from line `since` on:
    the node is the unix socket of the internal server block that answered, after any it
    skipped ("-" when the gateway answered itself). The readiness poller's probes go to the
    nodes straight, so they are not among them."""
    answers = []
    for line in gateway.log_file.read_text().splitlines()[since:]:
        if line.startswith("{"):
            entry = json.loads(line)
            if entry["route"] == "predictions":
                answers.append((entry["node"].split(", ")[-1], entry["status"]))
    return answers


def log_length(gateway) -> int:
    """Lines in the gateway's access log so far."""
    return len(gateway.log_file.read_text().splitlines())


class SteadyLoad:
    """Keep-alive clients sending one request after another until stopped, each of `texts`
    texts; every answer that is not a 200 prediction is counted as failed, with its status."""

    def __init__(self, gateway, keys, clients_per_key=4, texts=1):
        self.gateway, self.stop_event, self.texts = gateway, threading.Event(), texts
        self.ok, self.failed = 0, []
        self._lock = threading.Lock()
        self.keys = list(keys)
        self.threads = [
            threading.Thread(target=self._run, args=(k,)) for k in self.keys for _ in range(clients_per_key)
        ]

    def _run(self, key):
        with requests.Session() as s:
            while not self.stop_event.is_set():
                try:
                    text = "I love this" if self.texts == 1 else ["I love this"] * self.texts
                    r = s.post(
                        self.gateway.url("/predictions/sentiment"),
                        json={"text": text},
                        headers={"Authorization": f"Bearer {key()}"},
                        timeout=60,
                    )
                    answer = r.json() if r.status_code == 200 else None
                    good = (
                        answer is not None
                        and [a["label"] for a in (answer if self.texts > 1 else [answer])] == ["positive"] * self.texts
                    )
                    result = None if good else (r.status_code, r.text[:120])
                except requests.RequestException as e:
                    result = ("error", type(e).__name__)
                with self._lock:
                    if result is None:
                        self.ok += 1
                    else:
                        self.failed.append(result)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=90)


def keys_cli(server, *args: str) -> subprocess.CompletedProcess:
    """`python -m clients.keys ARGS` against a running server's config and key file."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "clients.keys",
            *args,
            "--config",
            str(server.workdir / "config.properties"),
            "--key-file",
            str(server.workdir / KEY_FILE),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def read_response(
    sock: socket.socket, buffered: bytearray, head_only: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response from the socket: (status, headers, body), its body framed by
    Content-Length, chunked, or (Connection: close) read to the close; what follows it
    stays in `buffered`. `head_only`: a HEAD's answer, no body read."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        buffered += chunk
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    status, body = int(lines[0].split()[1]), bytearray(rest)

    def more() -> None:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a body")
        body.extend(chunk)

    if head_only:
        buffered[:] = body
        return status, headers, b""
    if headers.get("transfer-encoding") == "chunked":
        out, pos = bytearray(), 0
        while True:
            while b"\r\n" not in body[pos:]:
                more()
            end = body.index(b"\r\n", pos)
            size = int(body[pos:end].split(b";")[0], 16)
            while len(body) < end + 2 + size + 2:
                more()
            out += body[end + 2 : end + 2 + size]
            pos = end + 2 + size + 2
            if size == 0:
                buffered[:] = body[pos:]
                return status, headers, bytes(out)
    if "content-length" in headers or headers.get("connection") != "close":
        length = int(headers.get("content-length", 0))
        while len(body) < length:
            more()
        buffered[:] = body[length:]
        return status, headers, bytes(body[:length])
    while chunk := sock.recv(65536):
        body.extend(chunk)
    buffered.clear()
    return status, headers, bytes(body)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes the connection within `within` seconds (reads what comes)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def raw_exchange(
    port: int,
    data: bytes,
    source: str = "127.0.0.1",
    host: str = "127.0.0.1",
    timeout: float = 30,
    head_only: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    """Send `data` (a whole request, as bytes) on a new connection from the loopback address
    `source` (any 127.x.y.z: a client address of its own) and read one response."""
    with socket.create_connection((host, port), timeout=timeout, source_address=(source, 0)) as sock:
        sock.sendall(data)
        return read_response(sock, bytearray(), head_only)
