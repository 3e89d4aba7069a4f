"""How a TorchServe of this project is started: its command line, environment and the
wait for its key file. `make serve`, the container's entrypoint and the private test
servers all start it through here."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common.paths import CONFIG, LOG_CONFIG, ROOT, ROOT_RELATIVE_KEYS
from common.torchserve_files import KEY_FILE, format_properties, read_keys, read_properties


def derived_config(overrides: dict[str, str], base: Path = CONFIG) -> dict[str, str]:
    """The repo's config.properties with its relative paths made absolute, then `overrides`:
    the config of a TorchServe started anywhere but the repo root."""
    props = read_properties(base)
    for key in ROOT_RELATIVE_KEYS:
        if key in props:
            props[key] = str(ROOT / props[key])
    props.update(overrides)
    return props


def write_properties(path: Path, props: dict[str, str]) -> None:
    Path(path).write_text(format_properties(props), encoding="ascii")


def venv_bin() -> str:
    return str(Path(sys.executable).parent)


def command(config: Path | str, foreground: bool, log_config: Path = LOG_CONFIG) -> list[str]:
    """torchserve --start for a config.properties; --ncs: no snapshots (the config is the truth)."""
    return [
        os.path.join(venv_bin(), "torchserve"),
        "--start",
        *(["--foreground"] if foreground else []),
        "--ncs",
        "--ts-config",
        str(config),
        "--log-config",
        str(log_config),
    ]


def environment(tmpdir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment TorchServe and its workers run with: the venv first on PATH (the
    frontend starts workers with `python`), no tokenizer threads of their own."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", **extra)
    env["PATH"] = venv_bin() + os.pathsep + env.get("PATH", "")
    if tmpdir is not None:  # the launcher's pid file and the workers' sockets
        env.update(TMPDIR=str(tmpdir), TEMP=str(tmpdir))
    return env


def wait_for_keys(
    workdir: Path, since: float, timeout: float, alive: Callable[[], None] = lambda: None
) -> dict[str, str]:
    """The keys of the key_file.json that a TorchServe started at `since` writes into its
    working directory (a file from an earlier run does not count)."""
    key_file = Path(workdir) / KEY_FILE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive()
        try:
            if key_file.stat().st_mtime >= since - 1:
                return read_keys(key_file)
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass  # not written yet, or being written
        time.sleep(0.2)
    raise TimeoutError(f"TorchServe wrote no new {KEY_FILE} in {workdir} within {timeout:.0f}s")
