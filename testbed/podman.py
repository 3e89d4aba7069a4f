"""podman as the stack (container/stack.py) and the container tests run it: with the
project's containers.conf unless CONTAINERS_CONF names another."""

from __future__ import annotations

import os
import subprocess

from common.paths import ROOT

CONTAINERS_CONF = ROOT / "container" / "containers.conf"


def podman_env() -> dict[str, str]:
    return dict(os.environ, CONTAINERS_CONF=os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF)))


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, env=podman_env(), timeout=timeout
    )
