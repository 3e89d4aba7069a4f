"""nginx in front of TorchServe nodes: render nginx.conf.template (beside this file) with
gateway.js, run it with its readiness poller, stop it. The command line is in
gateway/__main__.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.keys import ROTATION_LOCK  # beside key_file.json, held for a key switch
from common.net import http, wait_for_port
from common.torchserve_files import KEY_FILE, read_keys, read_properties

TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.template"
SCRIPT = Path(__file__).resolve().parent / "gateway.js"
JS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"  # Debian's libnginx-mod-http-js
DRAINING_FILE = "draining"  # in the workdir: while it exists, /readyz answers 503
CLIENTS_FILE = "clients"  # in the workdir, when the clients are given as a dict
STATIC_DIR = "static"  # in the workdir: the fixed answers of the anonymous routes
READY_ANSWERS = "answers"  # in STATIC_DIR: the readiness answers, by route
READY_LINK = "ready"  # in STATIC_DIR: a link to READY_ANSWERS while some node answers
TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")

# RFC 6750's b64token: what a client key may be made of, 16 to 512 characters
CLIENT_KEY = re.compile(r"[A-Za-z0-9._~+/-]{16,512}=*")
CLIENT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass
class Node:
    """A TorchServe the gateway sends to: the directory it runs in (its key_file.json is
    read there on every request) and its inference port."""

    directory: Path
    inference_port: int

    @classmethod
    def from_dir(cls, directory: Path) -> Node:
        directory = Path(directory).resolve()
        props = read_properties(directory / "config.properties")
        return cls(directory, int(props["inference_address"].rsplit(":", 1)[1]))

    def key(self) -> str:
        return read_keys(self.directory / KEY_FILE)["inference"]


@dataclass
class JwtSettings:
    """JSON Web Tokens accepted beside the static keys: HS256 with the secret in a file
    (read on every request, so a new secret counts at once), with an audience and an
    issuer to match when given."""

    secret_file: Path
    audience: str = ""
    issuer: str = ""


@dataclass
class GatewaySettings:
    port: int
    clients: dict[str, str] | Path  # name -> gateway key, or a file of NAME=KEY lines (read per request)
    rate_per_s: int = 50
    burst: int = 100
    listen: str = "127.0.0.1"
    max_body: str = "1m"
    read_timeout_s: int = 60  # for a node's answer; past it the node counts as failed
    client_timeout_s: int = 10  # the whole request header; any pause in a body or answer
    # an idle keep-alive connection: longer than a balancer in front keeps its own idle ones
    # (and than the front's 75 s answer timeout), so the gateway is never the side that closes
    # one as a request arrives on it; a frozen gateway wakes with its timers run out, and closes
    # unread what was sent to it meanwhile (docs/chaos.md, the freeze)
    idle_timeout_s: int = 90
    conn_per_key: int = 64  # requests in progress per gateway key
    conn_per_address: int = 256  # per client address
    # requests in progress per node behind the gateway, all keys together: what a node answers
    # within a few of its unloaded p50s (bench/results/overload.json). Past it the next one gets
    # 429 at once rather than a place in TorchServe's queue it would wait in for longer than
    # its answer is worth (the handler's queue_budget_ms sheds those, at a higher cost).
    in_flight_per_node: int = 48
    worker_connections: int = 4096
    probe_rate_per_s: int = 20  # anonymous routes, per client address
    probe_burst: int = 40
    poll_interval_s: float = 1.0  # the readiness poller's period
    jwt: JwtSettings | None = None
    model: str = "sentiment"


def _check_config_string(value: str, what: str) -> str:
    # values that go into nginx string literals
    if not re.fullmatch(r"[A-Za-z0-9._~+/:@-]*", value):
        raise ValueError(f"{what} may hold letters, digits and . _ ~ + / : @ - only")
    return value


def check_clients(clients: dict[str, str]) -> dict[str, str]:
    """Client names and keys as the gateway takes them, or ValueError (naming no key)."""
    for name, key in clients.items():
        if not CLIENT_NAME.fullmatch(name):
            raise ValueError(f"a client name must be 1-64 letters, digits, '.', '_' or '-': {name!r}")
        if not CLIENT_KEY.fullmatch(key):
            raise ValueError(
                f"client {name}: a key must be 16-512 of the RFC 6750 token characters "
                "(letters, digits, - . _ ~ + /, then = padding)"
            )
    return clients


def read_clients_file(path: Path) -> dict[str, str]:
    clients = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, key = line.partition("=")
            clients[name.strip()] = key.strip()
    return clients


def readiness_answers(model: str) -> dict[str, dict[str, Any]]:
    """What each readiness route answers while some node is ready, by its $route name."""
    return {
        "readyz": {"status": "ready"},
        "v2_ready": {"ready": True},
        "v2_model_ready": {"name": model, "ready": True},
        "v1_model": {"name": model, "ready": True},
    }


def static_answers(model: str) -> dict[str, dict[str, Any]]:
    """The fixed answers of the other anonymous routes and of v2 model metadata."""
    return {
        "healthz": {"status": "alive"},
        "v2_live": {"live": True},
        "v2_server": {"name": "sentiment-torchserve", "version": "0.12.0", "extensions": []},
        "v2_model": {
            "name": model,
            "platform": "pytorch_torchserve",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "score", "datatype": "FP32", "shape": [-1]},
                {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
            ],
        },
    }


def node_socket(workdir: Path, index: int) -> Path:
    """The unix socket of the internal server block that adds node `index`'s key."""
    return Path(workdir).resolve() / f"node{index}.sock"


# What every proxying location sends on: the headers the handler reads are the gateway's
# (the protocol by route; explain and describe never from a client; the time it sends the
# request on, which the handler's queue budget counts from), and the client's
# key or token stays here (the node's server block puts in the node's key).
NODE_HEADERS = """            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_set_header sentiment-protocol $protocol;
            proxy_set_header sentiment-sent-at $msec;
            proxy_set_header explain "";
            proxy_set_header describe "";"""


def _node_servers(settings: GatewaySettings, nodes: list[Node], workdir: Path) -> tuple[str, str]:
    """The upstream's servers (one unix socket per node) and the internal server blocks
    behind those sockets, each adding its node's current key."""
    sockets = [node_socket(workdir, i) for i in range(1, len(nodes) + 1)]
    upstream = "\n".join(f"        server unix:{sock} max_fails=1 fail_timeout=5s;" for sock in sockets)
    proxy = f"""            proxy_set_header Authorization "Bearer $node_key";
            proxy_set_header Connection "";
            proxy_http_version 1.1;
            proxy_connect_timeout 1s;
            proxy_read_timeout {settings.read_timeout_s}s;
            # TorchServe unreachable or too slow: close without an answer, which the
            # upstream above counts as this node failing (and retries elsewhere)
            error_page 502 504 = @node_down;"""
    blocks = []
    for i, (node, sock) in enumerate(zip(nodes, sockets, strict=True), 1):
        directory = _check_config_string(str(node.directory), "a node directory")
        blocks.append(f"""    upstream torchserve{i} {{
        server 127.0.0.1:{node.inference_port};
        keepalive 16;
    }}

    # node {i}: TorchServe on 127.0.0.1:{node.inference_port}, run from {directory}
    server {{
        listen unix:{sock};
        access_log off;
        set $node_dir "{directory}";
        location / {{
            # a key rotation is switching this node's key: wait for the new one
            if (-f "{directory}/{ROTATION_LOCK}") {{
                rewrite ^ /_held$uri last;
            }}
{proxy}
            proxy_pass http://torchserve{i};
        }}
        location /_held/ {{
            internal;
            js_content gateway.hold;
        }}
        location /_resume/ {{
            internal;
            # the held request's answer comes back whole to gateway.js: room for the largest
            subrequest_output_buffer_size {settings.max_body};
            rewrite ^/_resume(/.*)$ $1 break;
{proxy}
            proxy_pass http://torchserve{i};
        }}
        location @node_down {{
            return 444;
        }}
    }}""")
    return upstream, "\n\n".join(blocks)


def render(settings: GatewaySettings, nodes: list[Node], workdir: Path) -> str:
    workdir = Path(workdir).resolve()
    upstream, node_servers = _node_servers(settings, nodes, workdir)
    clients_file = settings.clients if isinstance(settings.clients, Path) else workdir / CLIENTS_FILE
    jwt = settings.jwt
    fields = {
        "JS_MODULE": JS_MODULE,
        "JS_FILE": str(SCRIPT),
        # Started as root, nginx runs its workers as nobody, who could not open the node
        # sockets in the (owner-only) work directory: keep them the starting user.
        "USER": "user root;\n" if os.geteuid() == 0 else "",
        "LISTEN": settings.listen,
        "PORT": str(settings.port),
        "CLIENTS_FILE": _check_config_string(str(Path(clients_file).resolve()), "the clients file's path"),
        "JWT_SECRET_FILE": _check_config_string(
            str(Path(jwt.secret_file).resolve()) if jwt else "", "the JWT secret's path"
        ),
        "JWT_AUDIENCE": _check_config_string(jwt.audience if jwt else "", "the JWT audience"),
        "JWT_ISSUER": _check_config_string(jwt.issuer if jwt else "", "the JWT issuer"),
        "RATE": str(settings.rate_per_s),
        "BURST": str(settings.burst),
        "PROBE_RATE": str(settings.probe_rate_per_s),
        "PROBE_BURST": str(settings.probe_burst),
        "UPSTREAM_SERVERS": upstream,
        "NODE_SERVERS": node_servers,
        "NODE_HEADERS": NODE_HEADERS,
        "MAX_BODY": settings.max_body,
        # the node's server block times out first and counts as the node failing
        "PROXY_READ_TIMEOUT": f"{settings.read_timeout_s + 5}s",
        "CLIENT_TIMEOUT": f"{settings.client_timeout_s}s",
        "IDLE_TIMEOUT": f"{settings.idle_timeout_s}s",
        "CONN_PER_KEY": str(settings.conn_per_key),
        "CONN_PER_ADDRESS": str(settings.conn_per_address),
        "CONN_TOTAL": str(settings.in_flight_per_node * len(nodes)),
        "WORKER_CONNECTIONS": str(settings.worker_connections),
        "NOFILE": str(2 * settings.worker_connections + 64),
        "MODEL": settings.model,
        "DRAINING_FILE": str(workdir / DRAINING_FILE),
        "STATIC": str(workdir / STATIC_DIR),
    }
    text = TEMPLATE.read_text()
    for name, value in fields.items():
        text = text.replace(f"@{name}@", value)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise ValueError(f"template fields left unrendered: {left}")
    return text


class ReadinessPoller:
    """Keeps the link <workdir>/static/ready while some node answers: every `interval` seconds a fixed
    prediction to each node with its key. A node is ready when it answered 200; when it
    is busy (a full queue's 503, or no answer within the probe's timeout) it stays ready
    as long as its workers are (TorchServe's /ping); anything else (refused connection, a
    dead worker, a wrong key) and it is not. During a key rotation a node keeps its state.
    Probes from outside read the file, so they cost the nodes nothing."""

    PROBE_BODY = b'{"text": "readiness probe"}'

    def __init__(self, workdir: Path, nodes: list[Node], model: str, interval: float, timeout: float = 10.0):
        self.ready_link = Path(workdir) / STATIC_DIR / READY_LINK
        self.nodes, self.model, self.interval, self.timeout = nodes, model, interval, timeout
        self.state = [False] * len(nodes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readiness-poller", daemon=True)

    def _node_ready(self, node: Node, was_ready: bool) -> bool:
        if (node.directory / ROTATION_LOCK).exists():
            return was_ready
        try:
            auth = {"Authorization": f"Bearer {node.key()}"}
        except (OSError, ValueError, KeyError):
            return False
        base = f"http://127.0.0.1:{node.inference_port}"
        try:
            status, _ = http(
                f"{base}/predictions/{self.model}",
                "POST",
                self.PROBE_BODY,
                {**auth, "Content-Type": "application/json"},
                timeout=self.timeout,
            )
        except OSError as e:  # refused, reset, or no answer in time
            if not isinstance(e, TimeoutError) and "timed out" not in str(e):
                return False
            status = 503
        if status == 200:
            return True
        if status == 503:  # busy: ready while its workers are
            try:
                return http(f"{base}/ping", headers=auth, timeout=self.timeout)[0] == 200
            except OSError:
                return False
        return False

    def poll_once(self) -> bool:
        self.state = [self._node_ready(node, was) for node, was in zip(self.nodes, self.state, strict=True)]
        ready = any(self.state)
        if ready and not self.ready_link.is_symlink():
            tmp = self.ready_link.with_name(READY_LINK + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(READY_ANSWERS)
            os.replace(tmp, self.ready_link)
        elif not ready:
            self.ready_link.unlink(missing_ok=True)
        return ready

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll_once()

    def start(self) -> None:
        """The first poll before this returns: a gateway just started says what is true."""
        self.poll_once()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)
        self.ready_link.unlink(missing_ok=True)


@dataclass
class Gateway:
    """nginx with the rendered config in `workdir`, stopped by its pid, and its readiness
    poller. nginx writes its access log (JSON lines) and errors to `output`: a file in
    the workdir by default, or None to inherit this process's stdout and stderr (a
    container's log)."""

    workdir: Path
    settings: GatewaySettings
    output: Path | None = field(default=Path("logs/nginx.out"))
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    poller: ReadinessPoller | None = field(default=None, init=False)

    @property
    def host(self) -> str:
        """Where this machine reaches the gateway."""
        return "127.0.0.1" if self.settings.listen == "0.0.0.0" else self.settings.listen

    def url(self, path: str = "") -> str:
        return f"http://{self.host}:{self.settings.port}{path}"

    @property
    def log_file(self) -> Path | None:
        return None if self.output is None else self.workdir / self.output

    def write_config(self, nodes: list[Node]) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)  # the node sockets inside add node keys: the owner's only
        static = self.workdir / STATIC_DIR
        for sub in ("logs", f"{STATIC_DIR}/{READY_ANSWERS}", *(f"tmp/{d}" for d in TEMP_DIRS)):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        for name, answer in static_answers(self.settings.model).items():
            (static / f"{name}.json").write_text(json.dumps(answer) + "\n")
        for name, answer in readiness_answers(self.settings.model).items():
            (static / READY_ANSWERS / f"{name}.json").write_text(json.dumps(answer) + "\n")
        if isinstance(self.settings.clients, dict):
            lines = "".join(f"{n}={k}\n" for n, k in check_clients(self.settings.clients).items())
            _write_private(self.workdir / CLIENTS_FILE, lines)
        else:
            check_clients(read_clients_file(self.settings.clients))
        config = self.workdir / "nginx.conf"
        _write_private(config, render(self.settings, nodes, self.workdir))
        return config

    def _nginx(self, *args: str) -> list[str]:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise FileNotFoundError("nginx is missing: apt-get install nginx-light libnginx-mod-http-js")
        if not Path(JS_MODULE).exists():
            raise FileNotFoundError(f"{JS_MODULE} is missing: apt-get install libnginx-mod-http-js")
        return [binary, "-p", str(self.workdir), "-e", "stderr", "-c", str(self.workdir / "nginx.conf"), *args]

    def start(self, nodes: list[Node], timeout: float = 15.0) -> Gateway:
        self.write_config(nodes)
        (self.workdir / DRAINING_FILE).unlink(missing_ok=True)
        # A gateway killed outright (SIGKILL, the OOM killer) leaves its node sockets behind and
        # nginx cannot bind over them: in a pod whose workdir (an emptyDir) outlives the container,
        # every restart failed. The workdir is this gateway's own: what is there is stale.
        for index in range(1, len(nodes) + 1):
            node_socket(self.workdir, index).unlink(missing_ok=True)
        check = subprocess.run(self._nginx("-t", "-q"), capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused the config:\n{check.stderr}")
        log = open(self.log_file, "ab") if self.log_file is not None else None
        proc = subprocess.Popen(self._nginx("-g", "daemon off;"), stdout=log, stderr=log, start_new_session=True)
        self.proc = proc
        if log is not None:
            log.close()

        def alive() -> None:
            if proc.poll() is not None:
                tail = self.log_file.read_text()[-2000:] if self.log_file is not None else ""
                raise RuntimeError(f"nginx exited: {tail}")

        try:
            wait_for_port(self.host, self.settings.port, timeout, alive)
        except BaseException:
            self.stop()
            raise
        self.poller = ReadinessPoller(self.workdir, nodes, self.settings.model, self.settings.poll_interval_s)
        self.poller.start()
        return self

    def reload(self, nodes: list[Node]) -> None:
        """A new configuration (other settings or nodes): nginx switches to it gracefully.
        Neither a key rotation nor a changed clients file needs one: both are read per request."""
        self.write_config(nodes)
        subprocess.run(self._nginx("-t", "-q"), check=True, capture_output=True)
        if self.proc is None:
            raise RuntimeError("reload: the gateway was not started")
        self.proc.send_signal(signal.SIGHUP)

    def set_draining(self) -> None:
        """/readyz answers 503 from now on; everything else is served as before."""
        (self.workdir / DRAINING_FILE).touch()

    def stop(self) -> None:
        """Graceful: nginx closes its port, answers the requests in flight, then exits."""
        if self.poller is not None:
            self.poller.stop()
            self.poller = None
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


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds keys), replacing it in one step."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
