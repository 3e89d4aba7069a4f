"""Loopback ports (pick a free one, see whether one answers, wait until one does) and one
plain HTTP request. Standard library only."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
