"""The single-node path, from one command: TorchServe with the repo's config.properties,
and the nginx gateway in front of it on port 8000 with a client key of its own.

    python -m server.serve          (what `make serve` runs)
    python -m server.serve stop     (what `make stop` runs)

Both run in the background from the repo root: TorchServe's key_file.json and logs/ land
there, the gateway's access log in logs/gateway.log. The client key is written once into
gateway_clients (git-ignored, owner-only: one `local=KEY` line, the gateway's clients file)
and kept across runs; a client sends it as `Authorization: Bearer KEY`. TorchServe's own
port (8080) stays open on loopback for TorchServe's clients; the gateway's guarantees
(limits per key, probes, request IDs, JSON refusals) hold through port 8000 only.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from clients.torchserve import TorchServeClient
from common.contract import GATEWAY_PORT
from common.net import http, port_is_open
from common.paths import CONFIG, ROOT
from common.torchserve_files import KEY_FILE, read_properties
from gateway.nginx import read_clients_file
from server import launch

CLIENTS_FILE = "gateway_clients"  # in the run directory: NAME=KEY lines, the gateway reads it
CLIENT_NAME = "local"
GATEWAY_WORKDIR = Path("build") / "gateway"  # in the run directory: nginx's config and sockets
GATEWAY_PID = Path("logs") / "gateway.pid"  # the gateway's supervisor (python -m gateway)
GATEWAY_LOG = Path("logs") / "gateway.log"
STOP_TIMEOUT_S = 90  # the gateway answers what is in flight before it exits


def inference_address(config: Path) -> tuple[str, int]:
    """(host, port) TorchServe's inference API listens on, by `config`."""
    address = urlsplit(read_properties(config)["inference_address"])
    return address.hostname or "127.0.0.1", address.port or 8080


def client_key(run_dir: Path) -> str:
    """The local client's key: read from the clients file as the gateway reads it
    (ValueError naming any line it would not take), or made and written there (owner only)
    the first time."""
    path = run_dir / CLIENTS_FILE
    if path.exists():
        key = read_clients_file(path).get(CLIENT_NAME)
        if key is not None:
            return key
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as out:
        out.write(f"{CLIENT_NAME}={key}\n")
    path.chmod(0o600)
    return key


def _gateway_pid(run_dir: Path) -> int | None:
    """The pid of the gateway this run directory started, if it still runs: the pid file's,
    when that process is `python -m gateway` with this directory's workdir (a pid the
    system gave to another process since is not ours)."""
    try:
        pid = int((run_dir / GATEWAY_PID).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    workdir = str((run_dir / GATEWAY_WORKDIR).resolve()).encode()
    return pid if b"gateway" in cmdline and workdir in cmdline else None


def start_gateway(run_dir: Path, port: int, timeout: float = 120) -> str:
    """Start the gateway in front of the TorchServe running in `run_dir`, in the background,
    and wait until its /readyz says the model answers; its URL."""
    (run_dir / "logs").mkdir(exist_ok=True)
    client_key(run_dir)
    with open(run_dir / GATEWAY_LOG, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "--node",
                str(run_dir),
                "--clients-file",
                str(run_dir / CLIENTS_FILE),
                "--port",
                str(port),
                "--workdir",
                str((run_dir / GATEWAY_WORKDIR).resolve()),
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives `make serve`, and its Ctrl-C
        )
    (run_dir / GATEWAY_PID).write_text(f"{proc.pid}\n")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}: see {run_dir / GATEWAY_LOG}")
        try:
            if http(url + "/readyz", timeout=2)[0] == 200:
                return url
        except OSError:
            pass  # not listening yet
        time.sleep(0.3)
    raise TimeoutError(f"the gateway was not ready after {timeout:.0f}s: see {run_dir / GATEWAY_LOG}")


def start(
    run_dir: Path = ROOT, config: Path = CONFIG, gateway_port: int = GATEWAY_PORT, tmpdir: Path | None = None
) -> int:
    """Start TorchServe in `run_dir` with `config` (a config.properties there), then the
    gateway on `gateway_port`; 0 once both answer. `tmpdir`: TorchServe's TMPDIR (its pid
    file: `stop` passes the same)."""
    run_dir = Path(run_dir).resolve()
    props = read_properties(config)
    inference = props["inference_address"]
    for host, port, what in (
        (*inference_address(config), "TorchServe"),
        ("127.0.0.1", gateway_port, "the gateway"),
    ):
        if port_is_open(host, port):
            print(
                f"something already listens on {host}:{port}, where {what} would: an earlier "
                "`make serve`? (`make stop` ends it)",
                file=sys.stderr,
            )
            return 1
    started = time.time()
    # TorchServe's console output repeats logs/*.log; keep it out of the terminal.
    (run_dir / "logs").mkdir(exist_ok=True)
    with open(run_dir / "logs" / "console.log", "ab") as console:
        result = subprocess.run(
            launch.command(config, foreground=False),
            cwd=run_dir,
            env=launch.environment(tmpdir),
            stdout=console,
            stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        print("torchserve did not start (see logs/console.log); is it already running? (make stop)", file=sys.stderr)
        return result.returncode
    try:
        launch.wait_for_keys(run_dir, started, timeout=60)
        time.sleep(0.2)  # let the write finish
        TorchServeClient.from_config(config, run_dir / KEY_FILE).wait_until_ready(timeout=180)
        gateway = start_gateway(run_dir, gateway_port)
    except (TimeoutError, RuntimeError, ValueError) as e:
        print(f"{e}; see logs/ (`make stop` stops what started)", file=sys.stderr)
        return 1
    print(
        f"\nUp in {time.time() - started:.0f}s: the gateway on {gateway} (the way in), TorchServe on "
        f"{inference} (inference), {props['management_address']} (management), "
        f"{props['metrics_address']}/metrics.\n"
        f"Your client key is in {CLIENTS_FILE} (the line {CLIENT_NAME}=KEY). Try it:\n"
        f"  KEY=$(sed -n 's/^{CLIENT_NAME}=//p' {CLIENTS_FILE})\n"
        f"  curl -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' "
        f'-d \'{{"text": "I love this"}}\' {gateway}/predictions/sentiment\n'
        "Stop both with: make stop"
    )
    return 0


def stop(run_dir: Path = ROOT, config: Path = CONFIG, tmpdir: Path | None = None) -> int:
    """Stop the gateway (SIGTERM: it answers what is in flight, then exits), then
    TorchServe, and wait until its inference port is closed (`torchserve --stop` only
    signals it); 0 when neither is left running."""
    run_dir = Path(run_dir).resolve()
    status = 0
    pid = _gateway_pid(run_dir)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _gateway_pid(run_dir) == pid and time.monotonic() < deadline:
            time.sleep(0.2)
        if _gateway_pid(run_dir) == pid:
            print(f"the gateway (pid {pid}) did not stop in {STOP_TIMEOUT_S}s", file=sys.stderr)
            status = 1
        else:
            print("gateway stopped")
    (run_dir / GATEWAY_PID).unlink(missing_ok=True)
    torchserve = [os.path.join(launch.venv_bin(), "torchserve"), "--stop"]
    if subprocess.run(torchserve, cwd=run_dir, env=launch.environment(tmpdir)).returncode != 0:
        status = 1
    host, port = inference_address(config)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while port_is_open(host, port) and time.monotonic() < deadline:
        time.sleep(0.2)
    if port_is_open(host, port):
        print(f"TorchServe still listens on {host}:{port} after {STOP_TIMEOUT_S}s", file=sys.stderr)
        status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["stop"]:
        return stop()
    if args:
        print("usage: python -m server.serve [stop]", file=sys.stderr)
        return 2
    return start()


if __name__ == "__main__":
    sys.exit(main())
