"""nginx in front of TorchServe nodes: render nginx.conf.template (beside this file), run
it, reload it with new node keys, stop it. The command line is in gateway/__main__.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from clients.net import wait_for_port
from clients.torchserve import KEY_FILE, read_keys, read_properties

TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.template"
DRAINING_FILE = "draining"  # in the workdir: while it exists, /readyz answers 503
STATIC_DIR = "static"  # in the workdir: the fixed KServe v1 / OIP v2 answers
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
    clients: dict[str, str]  # name -> gateway key
    rate_per_s: int = 50
    burst: int = 100
    listen: str = "127.0.0.1"
    max_body: str = "1m"
    read_timeout_s: int = 60  # for a node's answer; past it the node counts as failed
    client_timeout_s: int = 10  # the whole request header; any pause in a body or answer
    idle_timeout_s: int = 30  # an idle keep-alive connection
    conn_per_key: int = 64  # requests in progress per gateway key
    conn_per_address: int = 256  # per client address
    conn_total: int = 1024
    worker_connections: int = 4096
    model: str = "sentiment"


def _check_token(value: str, what: str) -> str:
    # keys go into nginx string literals: keep them to the characters TorchServe uses
    if not value or not all(c.isalnum() or c in "-_." for c in value):
        raise ValueError(f"{what} must be letters, digits, '-', '_' or '.'")
    return value


def static_answers(model: str) -> dict[str, dict]:
    """The KServe v1 / OIP v2 answers that are fixed once their probe has passed, by the
    name the template's $api_path gives their path."""
    return {
        "v2_live": {"live": True},
        "v2_ready": {"ready": True},
        "v2_model_ready": {"name": model, "ready": True},
        "v1_model": {"name": model, "ready": True},
        "v2_model": {
            "name": model,
            "platform": "pytorch_torchserve",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                        {"name": "score", "datatype": "FP32", "shape": [-1]},
                        {"name": "scores", "datatype": "FP32", "shape": [-1, -1]}],
        },
    }


def node_socket(workdir: Path, index: int) -> Path:
    """The unix socket of the internal server block that adds node `index`'s key."""
    return Path(workdir).resolve() / f"node{index}.sock"


def _node_servers(settings: GatewaySettings, nodes: list[Node], workdir: Path) -> tuple[str, str]:
    """With several nodes: the upstream's servers (one unix socket per node) and the
    internal server blocks behind those sockets, each adding its node's key."""
    sockets = [node_socket(workdir, i) for i in range(1, len(nodes) + 1)]
    upstream = "\n".join(f"        server unix:{sock} max_fails=1 fail_timeout=5s;" for sock in sockets)
    node_servers = "\n".join(
        f"""    # node {i}: TorchServe on 127.0.0.1:{node.inference_port}
    server {{
        listen unix:{sock};
        access_log off;
        location / {{
            proxy_pass http://127.0.0.1:{node.inference_port};
            proxy_set_header Authorization "Bearer {_check_token(node.inference_key, 'a node key')}";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_read_timeout {settings.read_timeout_s}s;
            # TorchServe unreachable or too slow: close without an answer, which the
            # upstream above counts as this node failing (and retries elsewhere)
            error_page 502 504 = @node_down;
        }}
        location @node_down {{
            return 444;
        }}
    }}"""
        for i, (node, sock) in enumerate(zip(nodes, sockets), 1)
    )
    return upstream, node_servers


def render(settings: GatewaySettings, nodes: list[Node], workdir: Path) -> str:
    clients = "\n".join(
        f'        "Bearer {_check_token(key, "a gateway key")}" {_check_token(name, "a client name")};'
        for name, key in settings.clients.items()
    )
    if len(nodes) == 1:  # proxy straight to TorchServe, with its key in place of the client's
        node = nodes[0]
        upstream = f"        server 127.0.0.1:{node.inference_port};"
        node_servers = ""
        node_auth = f'            proxy_set_header Authorization "Bearer {_check_token(node.inference_key, "a node key")}";'
    else:
        upstream, node_servers = _node_servers(settings, nodes, workdir)
        node_auth = ""
    fields = {
        # Started as root, nginx runs its workers as nobody, who could not open the node
        # sockets in the (owner-only) work directory: keep them the starting user.
        "USER": "user root;\n" if os.geteuid() == 0 else "",
        "LISTEN": settings.listen,
        "PORT": str(settings.port),
        "CLIENT_KEYS": clients,
        "RATE": str(settings.rate_per_s),
        "BURST": str(settings.burst),
        "UPSTREAM_SERVERS": upstream,
        "NODE_SERVERS": node_servers,
        "NODE_AUTH": node_auth,
        "MAX_BODY": settings.max_body,
        # with internal server blocks, theirs expires first and counts as the node failing
        "PROXY_READ_TIMEOUT": f"{settings.read_timeout_s + (5 if node_servers else 0)}s",
        "CLIENT_TIMEOUT": f"{settings.client_timeout_s}s",
        "IDLE_TIMEOUT": f"{settings.idle_timeout_s}s",
        "CONN_PER_KEY": str(settings.conn_per_key),
        "CONN_PER_ADDRESS": str(settings.conn_per_address),
        "CONN_TOTAL": str(settings.conn_total),
        "WORKER_CONNECTIONS": str(settings.worker_connections),
        "NOFILE": str(2 * settings.worker_connections + 64),
        "MODEL": settings.model,
        "DRAINING_FILE": str(Path(workdir).resolve() / DRAINING_FILE),
        "STATIC": str(Path(workdir).resolve() / STATIC_DIR),
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

    @property
    def host(self) -> str:
        """Where this machine reaches the gateway."""
        return "127.0.0.1" if self.settings.listen == "0.0.0.0" else self.settings.listen

    def url(self, path: str = "") -> str:
        return f"http://{self.host}:{self.settings.port}{path}"

    def write_config(self, nodes: list[Node]) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)  # the node sockets inside add node keys: the owner's only
        for sub in ("logs", STATIC_DIR, *(f"tmp/{d}" for d in TEMP_DIRS)):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        for name, answer in static_answers(self.settings.model).items():
            (self.workdir / STATIC_DIR / f"{name}.json").write_text(json.dumps(answer) + "\n")
        config = self.workdir / "nginx.conf"
        # the file holds node keys: readable by the owner only
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(render(self.settings, nodes, self.workdir))
        return config

    def _nginx(self, *args: str) -> list[str]:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise FileNotFoundError("nginx is missing: apt-get install nginx-light")
        return [binary, "-p", str(self.workdir), "-e", "logs/error.log", "-c", str(self.workdir / "nginx.conf"),
                *args]

    def start(self, nodes: list[Node], timeout: float = 15.0) -> "Gateway":
        self.write_config(nodes)
        (self.workdir / DRAINING_FILE).unlink(missing_ok=True)
        check = subprocess.run(self._nginx("-t", "-q"), capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused the config:\n{check.stderr}")
        log = open(self.workdir / "logs" / "nginx.out", "wb")
        self.proc = subprocess.Popen(self._nginx("-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

        def alive() -> None:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited: " + (self.workdir / "logs" / "nginx.out").read_text()[-2000:])

        try:
            wait_for_port(self.host, self.settings.port, timeout, alive)
        except BaseException:
            self.stop()
            raise
        return self

    def reload(self, nodes: list[Node]) -> None:
        """New node keys (same nodes): rewrite the config and let nginx switch to it gracefully."""
        self.write_config(nodes)
        subprocess.run(self._nginx("-t", "-q"), check=True, capture_output=True)
        self.proc.send_signal(signal.SIGHUP)

    def set_draining(self) -> None:
        """/readyz answers 503 from now on; everything else is served as before."""
        (self.workdir / DRAINING_FILE).touch()

    def stop(self) -> None:
        """Graceful: nginx closes its port, answers the requests in flight, then exits."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGQUIT)
            self.proc.wait(timeout=self.settings.read_timeout_s + 10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass
        self.proc = None
