"""nginx in front of TorchServe nodes: render gateway/nginx.conf.template, run, reload, stop.

    python -m serving.gateway --node DIR [--node DIR ...] --client NAME=KEY [--port 8000]

Each --node is a directory a TorchServe was started from (config.properties and
key_file.json inside, as `make serve` leaves the repo root); each --client a key that
clients send as `Authorization: Bearer KEY`. Runs nginx in the foreground until Ctrl-C.
After a node's keys rotate (python -m serving.tokens rotate), send this process SIGHUP:
it re-reads every node's key_file.json and reloads nginx without dropping requests.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.client import KEY_FILE, http, read_keys, read_properties

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "gateway" / "nginx.conf.template"
TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")


@dataclass
class Node:
    inference_port: int
    inference_key: str

    @classmethod
    def from_dir(cls, directory: Path) -> "Node":
        props = read_properties(directory / "config.properties")
        port = int(props["inference_address"].rsplit(":", 1)[1])
        return cls(port, read_keys(directory / KEY_FILE)["inference"])


@dataclass
class GatewaySettings:
    port: int
    node_proxy_ports: list[int]  # one internal loopback port per node
    clients: dict[str, str]  # name -> gateway key
    rate_per_s: int = 50
    burst: int = 100
    max_body: str = "1m"
    read_timeout: str = "60s"
    model: str = "sentiment"


def _check_token(value: str, what: str) -> str:
    # keys go into nginx string literals: keep them to the characters TorchServe uses
    if not value or not all(c.isalnum() or c in "-_." for c in value):
        raise ValueError(f"{what} must be letters, digits, '-', '_' or '.'")
    return value


def render(settings: GatewaySettings, nodes: list[Node]) -> str:
    if len(nodes) != len(settings.node_proxy_ports):
        raise ValueError("one internal proxy port per node")
    clients = "\n".join(
        f'        "Bearer {_check_token(key, "a gateway key")}" {_check_token(name, "a client name")};'
        for name, key in settings.clients.items()
    )
    upstream = "\n".join(
        f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;" for port in settings.node_proxy_ports
    )
    node_servers = "\n".join(
        f"""    # node {i}: TorchServe on 127.0.0.1:{node.inference_port}
    server {{
        listen 127.0.0.1:{port};
        access_log off;
        location / {{
            proxy_pass http://127.0.0.1:{node.inference_port};
            proxy_set_header Authorization "Bearer {_check_token(node.inference_key, 'a node key')}";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_read_timeout {settings.read_timeout};
            error_page 502 504 = @node_unavailable;
        }}
        location @node_unavailable {{
            return 502 '{{"code": 502, "type": "NodeUnavailable", "message": "no TorchServe node answered"}}\n';
        }}
    }}"""
        for i, (node, port) in enumerate(zip(nodes, settings.node_proxy_ports), 1)
    )
    fields = {
        "PORT": str(settings.port),
        "CLIENT_KEYS": clients,
        "RATE": str(settings.rate_per_s),
        "BURST": str(settings.burst),
        "UPSTREAM_SERVERS": upstream,
        "NODE_SERVERS": node_servers,
        "MAX_BODY": settings.max_body,
        "READ_TIMEOUT": settings.read_timeout,
        "MODEL": settings.model,
    }
    text = TEMPLATE.read_text()
    for name, value in fields.items():
        text = text.replace(f"@{name}@", value)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise ValueError(f"template fields left unrendered: {left}")
    return text


@dataclass
class Gateway:
    """nginx with the rendered config in `workdir`, stopped by its pid."""

    workdir: Path
    settings: GatewaySettings
    proc: subprocess.Popen | None = field(default=None, init=False)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.settings.port}{path}"

    def write_config(self, nodes: list[Node]) -> Path:
        for sub in ("logs", *(f"tmp/{d}" for d in TEMP_DIRS)):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        config = self.workdir / "nginx.conf"
        # the file holds node keys: readable by the owner only
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(render(self.settings, nodes))
        return config

    def _nginx(self, *args: str) -> list[str]:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise FileNotFoundError("nginx is missing: apt-get install nginx-light")
        return [binary, "-p", str(self.workdir), "-e", "logs/error.log", "-c", str(self.workdir / "nginx.conf"),
                *args]

    def start(self, nodes: list[Node], timeout: float = 15.0) -> "Gateway":
        self.write_config(nodes)
        check = subprocess.run(self._nginx("-t", "-q"), capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused the config:\n{check.stderr}")
        log = open(self.workdir / "logs" / "nginx.out", "wb")
        self.proc = subprocess.Popen(self._nginx("-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited: " + (self.workdir / "logs" / "nginx.out").read_text()[-2000:])
            try:
                http(self.url("/no-such-path"), timeout=1)
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError("nginx did not start listening")

    def reload(self, nodes: list[Node]) -> None:
        """New node keys (same nodes): rewrite the config and let nginx switch to it gracefully."""
        self.write_config(nodes)
        subprocess.run(self._nginx("-t", "-q"), check=True, capture_output=True)
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGQUIT)  # graceful: finish requests in flight
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass
        self.proc = None


def main(argv: list[str] | None = None) -> int:
    from serving.local_server import free_port

    p = argparse.ArgumentParser(prog="python -m serving.gateway", description=__doc__.splitlines()[0])
    p.add_argument("--node", action="append", type=Path, required=True,
                   help="directory a TorchServe node runs in (config.properties, key_file.json)")
    p.add_argument("--client", action="append", required=True, help="NAME=KEY of a gateway client")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--rate", type=int, default=50, help="requests/s per client")
    p.add_argument("--burst", type=int, default=100)
    p.add_argument("--workdir", type=Path, default=REPO / "build" / "gateway")
    args = p.parse_args(argv)
    clients = dict(c.split("=", 1) for c in args.client)
    nodes = [Node.from_dir(d) for d in args.node]
    settings = GatewaySettings(args.port, [free_port() for _ in nodes], clients, args.rate, args.burst)
    gateway = Gateway(args.workdir, settings).start(nodes)
    signal.signal(signal.SIGHUP, lambda *_: gateway.reload([Node.from_dir(d) for d in args.node]))
    print(f"gateway on {gateway.url()} in front of {len(nodes)} node(s); Ctrl-C stops it, "
          f"SIGHUP to pid {os.getpid()} reloads the node keys", file=sys.stderr)
    try:
        while gateway.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
