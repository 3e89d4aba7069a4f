"""The management CLI refuses arguments that TorchServe would act on badly, before calling it.

TorchServe 0.12 answers `scale --workers -1` with a 500 but removes every worker, and
accepts batch_size=-1 and model names with `../`. A listener stands in for TorchServe's
management port and counts the connections the CLI opens: a refusal opens none.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import pytest

from common.paths import ROOT


@pytest.fixture
def management_port(tmp_path):
    """A config.properties and key file pointing the CLI at a socket that counts connections."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    (tmp_path / "config.properties").write_text(f"management_address=http://127.0.0.1:{port}\n")
    (tmp_path / "key_file.json").write_text(
        json.dumps({name: {"key": "k"} for name in ("management", "inference", "API")})
    )
    yield tmp_path, accepted
    stop.set()
    thread.join(timeout=5)
    listener.close()


def manage(directory, *args):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "clients.manage",
            "--config",
            str(directory / "config.properties"),
            "--key-file",
            str(directory / "key_file.json"),
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args, reason",
    [
        (["scale", "sentiment", "1.0", "--workers", "-1"], "0 or more"),
        (["scale", "sentiment", "--min-workers", "-3"], "0 or more"),
        (["scale", "sentiment", "--workers", "0"], "--allow-zero"),
        (["scale", "sentiment", "--min-workers", "3", "--max-workers", "1"], "not be more than"),
        (["scale", "sentiment"], "needs --workers"),
        (["register", "sentiment.mar", "--batch-size", "-1"], "--batch-size must be 1 or more"),
        (["register", "sentiment.mar", "--batch-size", "0"], "--batch-size must be 1 or more"),
        (["register", "sentiment.mar", "--max-batch-delay", "-5"], "--max-batch-delay must be 0 or more"),
        (["register", "sentiment.mar", "--workers", "0"], "1 or more for a new registration"),
        (["register", "sentiment.mar", "--response-timeout", "0"], "--response-timeout"),
        (["register", "../outside.mar"], "file name of a .mar"),
        (["register", "/etc/passwd"], "file name of a .mar"),
        (["register", "http://example.com/x.mar"], "file name of a .mar"),
        (["describe", "../sentiment"], "model name"),
        (["unregister", "sentiment", "../1.0"], "model version"),
        (["set-default", "senti/ment", "2.0"], "model name"),
    ],
)
def test_bad_arguments_are_refused_without_calling_torchserve(management_port, args, reason):
    directory, accepted = management_port
    result = manage(directory, *args)
    assert result.returncode == 2, result.stderr
    assert reason in result.stderr and "TorchServe was not called" in result.stderr
    assert accepted == []


@pytest.mark.parametrize(
    "args",
    [
        ["scale", "sentiment", "1.0", "--workers", "2"],
        ["scale", "sentiment", "--workers", "0", "--allow-zero"],
        ["register", "sentiment-torch.mar", "--batch-size", "16", "--max-batch-delay", "0", "--workers", "1"],
        ["describe", "sentiment", "2.0"],
    ],
)
def test_good_arguments_reach_torchserve(management_port, args):
    directory, accepted = management_port
    result = manage(directory, *args)
    assert accepted, result.stderr  # the CLI did call the (stand-in) management port
    assert "was not called" not in result.stderr
