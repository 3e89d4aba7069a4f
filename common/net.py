"""Loopback ports (pick a free one, see whether one answers, wait until one does) and one
plain HTTP request. Standard library only."""

from __future__ import annotations

import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

# ports this process has handed out: never handed out twice, even once free again
_handed_out: set[int] = set()
# its own generator: a test runner that reseeds `random` before each test (pytest-randomly)
# would otherwise make every test try the same ports first
_random = random.Random()


def _ephemeral_low() -> int:
    """The lowest port of the kernel's range for outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a server started next.

    Chosen below the kernel's ephemeral range: a port the kernel handed out (bind to port 0)
    is also one it hands to outgoing connections, so between this call and the server's
    bind any client's connection could take it (CI: a TorchServe's gRPC port taken so).
    And one port is never handed out twice by this process, so two servers started one
    after the other cannot be given the same."""
    high = min(_ephemeral_low(), 65536)
    for _ in range(1000):
        port = _random.randrange(10_000, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port on 127.0.0.1 in 10000-{high - 1}")


def port_is_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, alive: Callable[[], None] = lambda: None) -> None:
    """Wait until something accepts connections on host:port; `alive` raises if the
    process that should listen there died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive()
        if port_is_open(host, port):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def http(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, Any] | None = None,
    timeout: float = 30,
) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
