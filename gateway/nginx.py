"""nginx in front of TorchServe nodes: render nginx.conf.template (beside this file) with
gateway.js, run it with its readiness poller, stop it. The command line is in
gateway/__main__.py."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import contract, events
from common.keys import LOCK_MAX_AGE_S, ROTATION_LOCK, lock_is_fresh  # beside key_file.json, around a key switch
from common.net import http, wait_for_port
from common.torchserve_files import KEY_FILE, read_keys, read_properties
from gateway.latency import EXPOSITION, LatencyCollector
from gateway.latency import SOCKET as LATENCY_SOCKET
from gateway.refusals import RETRY_AFTER, SHAPES, refusals
from gateway.routes import protocol_map, route_map
from gateway.tls import CIPHERS, PROTOCOLS, TlsSettings

TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.template"
TLS_TEMPLATE = Path(__file__).resolve().parent / "tls.conf.template"  # the client port's TLS front
SCRIPT = Path(__file__).resolve().parent / "gateway.js"
# Debian's packages of nginx's modules that the config loads (nginx-light itself has none)
MODULES = {
    "JS_MODULE": ("/usr/lib/nginx/modules/ngx_http_js_module.so", "libnginx-mod-http-js"),
    "STREAM_MODULE": ("/usr/lib/nginx/modules/ngx_stream_module.so", "libnginx-mod-stream"),
    "HEADERS_MORE_MODULE": (
        "/usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so",
        "libnginx-mod-http-headers-more-filter",
    ),
}
API_SOCKET = "api.sock"  # in the workdir: the API's server, behind the stream front
METRICS_SOCKET = "metrics.sock"  # in the workdir: the metrics server, behind its stream front
CLIENT_OFF_SOCKET = "client-off.sock"  # in the workdir: nginx.conf's client-port listener under TLS
METRICS_OFF_SOCKET = "metrics-off.sock"  # in the workdir: the metrics front's listener while it is off
TLS_CONFIG = "tls.conf"  # in the workdir: the TLS front's config (tls.conf.template)
DRAINING_FILE = "draining"  # in the workdir: while it exists, /readyz answers 503
CLIENTS_FILE = "clients"  # in the workdir, when the clients are given as a dict
STATIC_DIR = "static"  # in the workdir: the fixed answers of the anonymous routes
REFUSALS_DIR = "refusals"  # in STATIC_DIR: gateway/refusals.py's bodies, <shape>/<name>.json
READY_ANSWERS = "answers"  # in STATIC_DIR: the readiness answers, by route
READY_LINK = "ready"  # in STATIC_DIR: a link to READY_ANSWERS while some node answers
PROBE_MAX_BODY = "16"  # bytes: probes and metadata take no body
TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")

# The clients' rules, here and in gateway/gateway.js (CLIENT_KEY, CLIENT_NAME, parseClients,
# MIN_SECRET_BYTES), which applies them on every request: tests/unit/test_gateway_js.py runs
# one table through both. A client key is 16 to 512 characters in all of RFC 6750's
# b64token; a name has no ':', so that no client can pass for a token's "jwt:<sub>".
CLIENT_KEY = re.compile(r"(?=.{16,512}\Z)[A-Za-z0-9._~+/-]+=*")
CLIENT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Why a line of the clients file is not taken, by parse_clients's code for it
CLIENT_LINE_PROBLEMS = {
    "form": "not NAME=KEY",
    "name": "a client name must be 1-64 letters, digits, '.', '_' or '-'",
    "key": "a key must be 16-512 of the RFC 6750 token characters (letters, digits, - . _ ~ + /, then = padding)",
    "ambiguous": "a key that the line of another client has too (both are ignored)",
}
MIN_JWT_SECRET_BYTES = 32  # HS256's key: the hash's length at least (RFC 7518 3.2)


@dataclass
class Node:
    """A TorchServe the gateway sends to: the directory it runs in (its key_file.json is
    read there on every request), its inference port and where its metrics listen
    (host:port, what the gateway's metrics listener proxies to)."""

    directory: Path
    inference_port: int
    # TorchServe's default metrics_address; None: one the gateway cannot proxy to (https)
    metrics: str | None = "127.0.0.1:8082"

    @classmethod
    def from_dir(cls, directory: Path) -> Node:
        directory = Path(directory).resolve()
        props = read_properties(directory / "config.properties")
        return cls(
            directory,
            int(props["inference_address"].rsplit(":", 1)[1]),
            _metrics_target(props.get("metrics_address", "http://127.0.0.1:8082")),
        )

    def key(self) -> str:
        return read_keys(self.directory / KEY_FILE)["inference"]


def _metrics_target(address: str) -> str | None:
    """host:port of a TorchServe metrics_address (http://HOST:PORT), as this machine
    reaches it (a node listening on every address, 0.0.0.0, on loopback), or None for one
    the gateway cannot proxy to (https): refused only if the metrics listener is on."""
    match = re.fullmatch(r"http://([0-9A-Za-z.-]+):(\d+)/?", address.strip())
    if match is None:
        return None
    host = "127.0.0.1" if match[1] == "0.0.0.0" else match[1]
    return f"{host}:{match[2]}"


@dataclass(frozen=True)
class JwtSettings:
    """JSON Web Tokens accepted beside the static keys: HS256 with the secret in a file
    (read on every request, so a new secret counts at once), naming this audience and this
    issuer (both required), and expiring at most `max_lifetime_s` ahead. Checked when made:
    ValueError for an empty audience or issuer, a lifetime that is not a positive number of
    seconds, or a secret file that cannot be read or holds under MIN_JWT_SECRET_BYTES (the
    message names the rule, never the secret). gateway.js checks all of it again on every
    token, and takes none while any of it fails."""

    secret_file: Path
    audience: str
    issuer: str
    max_lifetime_s: int = 3600

    def __post_init__(self) -> None:
        for value, what in ((self.audience, "audience"), (self.issuer, "issuer")):
            if not value:
                raise ValueError(f"JSON Web Tokens need an {what} to match (--jwt-{what})")
            _check_config_string(value, f"the JWT {what}")
        lifetime = self.max_lifetime_s
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
            raise ValueError("the JWT maximum lifetime must be a positive whole number of seconds")
        jwt_secret(Path(self.secret_file))


def jwt_secret(path: Path) -> bytes:
    """The HS256 secret in `path` as gateway.js takes it: the file's bytes, ASCII whitespace
    at either end left out; ValueError when it cannot be read or is shorter than
    MIN_JWT_SECRET_BYTES (naming the rule, never the secret)."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as e:
        raise ValueError(f"the JWT secret file {path} cannot be read: {e.strerror}") from None
    if len(secret) < MIN_JWT_SECRET_BYTES:
        raise ValueError(
            f"the JWT secret in {path} must be at least {MIN_JWT_SECRET_BYTES} bytes "
            "(whitespace at either end not counted)"
        )
    return secret


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
    # requests in progress per gateway key, bodies still arriving included; in all: open_total()
    conn_per_key: int = 64
    # connections per client address, from the moment each is accepted (idle ones included)
    conn_per_address: int = 256
    # requests in flight per node behind the gateway (their bodies in), all keys together:
    # what a node answers within a few of its unloaded p50s, however many keys share it.
    # Past it the next one gets 429 at once rather than a place in TorchServe's queue it
    # would wait in for longer than its answer is worth (the handler's queue_budget_ms sheds
    # those, at a higher cost). Measured (bench/results/README.md, overload): with 16 keys
    # at 1.5x and 3x the capacity, 24 kept 0.90 and 0.79 of it within the deadline, 48
    # (the cap before) 0.60 and 0.29, its admitted requests waiting past the deadline; 16
    # left the workers idle (0.66, 0.64)
    in_flight_per_node: int = 24
    # the share of a node's in-flight requests one key may hold: less than the whole, so one
    # key cannot take a node from the others, and most of it, so that a key alone keeps the
    # node's workers fed (a lone key at 12 of 24 got 0.72 of the capacity, at 16 0.77)
    key_share_of_node: float = 0.75
    worker_connections: int = 8192
    probe_rate_per_s: int = 20  # anonymous routes, per client address
    probe_burst: int = 40
    probes_in_progress_per_address: int = 16
    explain_rate_per_s: int = 2  # per caller: one caller cannot keep the explanation slots
    explain_burst: int = 4
    auth_failure_rate_per_s: int = 5  # requests with no known key or token, per client address
    auth_failure_burst: int = 20
    # how long a body nginx does not read (a refused request's) is drained before the close
    lingering_time_s: int = 2
    poll_interval_s: float = 1.0  # the readiness poller's period
    jwt: JwtSettings | None = None
    model: str = "sentiment"
    # TorchServe's metrics for Prometheus, GET /metrics only, on this port of `listen`
    # (None: off, as for local use; the pod passes --metrics-port). A listener of its own,
    # so that neither it nor the API's port can take the other's connections: a small cap
    # per address (a Prometheus holds one per target), short timeouts, a rate per address.
    metrics_port: int | None = None
    metrics_conn_per_address: int = 8
    metrics_timeout_s: int = 5  # the whole request header, any pause while the answer is read
    metrics_idle_timeout_s: int = 20  # between scrapes: above a 15 s interval, one connection stays
    metrics_node_timeout_s: int = 10  # TorchServe's answer: a scrape's timeout (the ServiceMonitor's)
    metrics_rate_per_s: int = 2  # scrapes per client address
    metrics_burst: int = 8
    # TLS on the client port (None: plain HTTP, for local use and behind a balancer that
    # terminates TLS); the pod of the TLS overlay passes --tls-cert-file and --tls-key-file
    tls: TlsSettings | None = None


def _check_config_string(value: str, what: str) -> str:
    # values that go into nginx string literals
    if not re.fullmatch(r"[A-Za-z0-9._~+/:@-]*", value):
        raise ValueError(f"{what} may hold letters, digits and . _ ~ + / : @ - only")
    return value


def client_problem(name: str, key: str) -> str | None:
    """What is wrong with a client's name or key, as a CLIENT_LINE_PROBLEMS code ("name",
    "key"), or None: the rule of one line, gateway.js's clientProblem."""
    if not CLIENT_NAME.fullmatch(name):
        return "name"
    if not CLIENT_KEY.fullmatch(key):
        return "key"
    return None


def _ambiguous(entries: list[tuple[str, str]]) -> set[str]:
    """The keys among (name, key) entries that more than one name has."""
    owners: dict[str, set[str]] = {}
    for name, key in entries:
        owners.setdefault(key, set()).add(name)
    return {key for key, names in owners.items() if len(names) > 1}


def _strip(text: str) -> str:
    return text.strip(" \t\r")  # gateway.js's strip: the same characters


def parse_clients(text: str) -> tuple[list[tuple[int, str, str]], list[tuple[int, str]]]:
    """A clients file's text judged line by line exactly as gateway.js's parseClients judges
    it on every request: (line, name, key) of each line taken and (line, problem) of each
    refused (a CLIENT_LINE_PROBLEMS code), lines numbered from 1 in order. Lines are split
    on "\\n"; spaces, tabs and "\\r" around a line, a name or a key are left out; blank
    lines and lines starting with '#' are skipped. A key that lines of two names have is
    refused on all of its lines: which client it stands for is not known."""
    taken: list[tuple[int, str, str]] = []
    refused: list[tuple[int, str]] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = _strip(raw)
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            refused.append((number, "form"))
            continue
        name, _, key = line.partition("=")
        name, key = _strip(name), _strip(key)
        problem = client_problem(name, key)
        if problem is None:
            taken.append((number, name, key))
        else:
            refused.append((number, problem))
    ambiguous = _ambiguous([(name, key) for _, name, key in taken])
    refused += [(number, "ambiguous") for number, _, key in taken if key in ambiguous]
    return [entry for entry in taken if entry[2] not in ambiguous], sorted(refused)


def check_clients(clients: dict[str, str]) -> dict[str, str]:
    """Client names and keys as the gateway takes them, or ValueError (naming no key)."""
    for name, key in clients.items():
        problem = client_problem(name, key)
        if problem == "name":
            raise ValueError(f"{CLIENT_LINE_PROBLEMS['name']}: {name!r}")
        if problem == "key":
            raise ValueError(f"client {name}: {CLIENT_LINE_PROBLEMS['key']}")
    ambiguous = _ambiguous(list(clients.items()))
    if ambiguous:
        names = sorted(name for name, key in clients.items() if key in ambiguous)
        raise ValueError(f"clients {', '.join(names)}: the same key for more than one client")
    return clients


def read_clients_file(path: Path) -> dict[str, str]:
    """The clients file's clients (a name of several lines: its last key), or ValueError
    naming each line that gateway.js would ignore, by its number and problem (never its
    text, which may be a key): a gateway does not start with a file it would half ignore."""
    text = Path(path).read_bytes().decode("utf-8", "replace")  # gateway.js reads it so
    taken, refused = parse_clients(text)
    if refused:
        lines = "; ".join(f"line {number}: {CLIENT_LINE_PROBLEMS[problem]}" for number, problem in refused)
        raise ValueError(f"the clients file {path}: {lines}")
    return {name: key for _, name, key in taken}


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


# the caller, from the API's server block to a node's (whose limit per key counts it);
# the node's block drops it before TorchServe
CLIENT_HEADER = "sentiment-client"


def nginx_variable(header: str) -> str:
    """nginx's variable for a request header: $http_ and the name, '-' as '_'."""
    return "$http_" + header.lower().replace("-", "_")


# What every proxying location sends on: the headers the handler reads are the gateway's
# (handlers/contract.py: the protocol by route; the time it sends the request on, which
# the handler's queue budget counts from; TorchServe's own never from a client), and the
# client's key or token stays here (the node's server block puts in the node's key).
NODE_HEADERS = "\n".join(
    f"            proxy_set_header {name} {value};"
    for name, value in (
        ("Connection", '""'),
        ("Authorization", '""'),
        (contract.PROTOCOL_HEADER, "$protocol"),
        (CLIENT_HEADER, "$client"),
        (contract.SENT_AT_HEADER, "$msec"),
        (contract.REQUEST_ID_HEADER, "$rid"),
        *((header, '""') for header in contract.TORCHSERVE_HEADERS),
    )
)


def open_total(settings: GatewaySettings, nodes: int) -> int:
    """Requests in progress at the API server, all callers together: what the nodes take in
    flight, and one caller's worth of bodies still arriving beside them. One caller's slow
    bodies then leave the nodes' whole capacity to the others; and since nginx holds each
    body in memory (up to max_body each), this bounds the gateway's memory too."""
    return settings.in_flight_per_node * nodes + settings.conn_per_key


def in_flight_per_key(settings: GatewaySettings) -> int:
    """Requests in flight one key may hold at one node: its share, at least one and fewer
    than the node's whole when the node takes more than one."""
    whole = settings.in_flight_per_node
    return max(1, min(whole - 1, int(whole * settings.key_share_of_node))) if whole > 1 else 1


# The statuses nginx can produce in each kind of place, and the refusal (gateway/refusals.py)
# that answers each. A location with error_page lines of its own inherits none: each kind
# lists all of its statuses.
ERROR_PAGES: dict[str, dict[int, str]] = {
    # before a route is known: what nginx refuses while it reads a request line and header
    "server": {
        400: "bad_request",
        404: "not_found",  # a client asking for a refusal's file itself
        405: "method_not_allowed",  # TRACE
        413: "too_large",
        414: "uri_too_long",
        494: "header_too_large",
        500: "internal",
        501: "not_implemented",
        502: "no_node",
        504: "no_node",
        505: "http_version",
    },
    "proxy": {400: "bad_request", 413: "too_large", 429: "too_many", 500: "internal", 502: "no_node", 504: "no_node"},
    "caller_file": {400: "bad_request", 413: "no_body", 429: "too_many", 500: "internal"},
    "anonymous": {400: "bad_request", 413: "no_body", 429: "too_many_probes", 500: "internal"},
    "unauthorized": {401: "unauthorized", 429: "too_many_failures", 500: "internal"},
    "node": {429: "node_busy", 500: "internal"},
    "node_explain": {429: "explain_busy", 500: "internal"},
}
# the metrics listener's server: all the server can refuse, from the request line on, four
# of them in its own words, and its own scrape rate
ERROR_PAGES["metrics"] = {
    **ERROR_PAGES["server"],
    404: "metrics_not_found",
    405: "metrics_get_only",  # TRACE
    413: "metrics_no_body",
    429: "too_many_scrapes",
}


def error_pages(shape: str, kind: str, model: str, max_body: str, indent: str = "            ") -> str:
    """error_page lines for a location of `kind` answering in `shape` (a shape's name, or
    an nginx variable holding one). A status answered by a refusal of another status is
    answered with the refusal's (nginx's 494 for a header over its buffers as 431, its
    504 as the 502 of a node that did not answer), so that status and body agree."""
    table = refusals(model, max_body)
    lines = []
    for status, name in ERROR_PAGES[kind].items():
        answer = "" if table[name].status == status else f"={table[name].status} "
        lines.append(f"{indent}error_page {status} {answer}/{REFUSALS_DIR}/{shape}/{name}.json;")
    return "\n".join(lines)


def refuse(shape: str, name: str, model: str, max_body: str) -> str:
    """A `return` of refusal `name` in `shape`, its body inline (with Retry-After where it
    has one)."""
    refusal = refusals(model, max_body)[name]
    body = refusal.body(shape).replace("\n", "\\n")
    if "'" in body or "$" in body:
        raise ValueError(f"refusal {name}: its body cannot be an nginx string literal")
    retry = "add_header Retry-After 1 always; " if refusal.status in RETRY_AFTER else ""
    return f"{retry}return {refusal.status} '{body}';"


def refusal_files(model: str, max_body: str) -> dict[str, str]:
    """<shape>/<name>.json -> body: what error_page serves."""
    return {
        f"{shape}/{name}.json": refusal.body(shape)
        for name, refusal in refusals(model, max_body).items()
        for shape in SHAPES
    }


def _node_servers(settings: GatewaySettings, nodes: list[Node], workdir: Path) -> tuple[str, str]:
    """The upstream's servers (one unix socket per node) and the internal server blocks
    behind those sockets, each admitting what its node can answer in time (requests in
    flight per node and per key and node, counted once a body is in) and adding its
    node's current key."""
    sockets = [node_socket(workdir, i) for i in range(1, len(nodes) + 1)]
    upstream = "\n".join(f"        server unix:{sock} max_fails=1 fail_timeout=5s;" for sock in sockets)

    def proxy(key: str = "$node_key") -> str:
        return f"""            proxy_set_header Authorization "Bearer {key}";
            proxy_set_header Connection "";
            proxy_set_header {CLIENT_HEADER} "";
            proxy_http_version 1.1;
            proxy_connect_timeout 1s;
            proxy_read_timeout {settings.read_timeout_s}s;
            # TorchServe unreachable or too slow: close without an answer, which the
            # upstream above counts as this node failing (and retries elsewhere)
            error_page 502 504 = @node_down;"""

    per_key = in_flight_per_key(settings)
    static = workdir / STATIC_DIR
    admit = f"limit_conn in_flight_per_node {settings.in_flight_per_node}; limit_conn in_flight_per_key {per_key};"
    # an explanation's location, and a rotating explanation's
    explain = f"""            # a location's own limit_conn replaces the server's: repeated
            {admit}
            limit_conn explanations_per_node 1;
{error_pages("$refusal_shape", "node_explain", settings.model, settings.max_body)}"""

    def send(name: str, key: str, node: int) -> str:
        """A location gateway.js sends a rotating request through, with `key` on it."""
        return f"""        location /{name}/ {{
            internal;
            # the answer comes back whole to gateway.js: room for the largest
            subrequest_output_buffer_size {settings.max_body};
            rewrite ^/{name}(/.*)$ $1 break;
{proxy(key)}
            proxy_pass http://torchserve{node};
        }}"""

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
        # the requests in flight to this node: {settings.in_flight_per_node} in all, {per_key} per key
        {admit}
        location / {{
{error_pages("$refusal_shape", "node", settings.model, settings.max_body)}
            # a key rotation is switching this node's key: sent on by gateway.js, which
            # sends again a request refused for the key of before the switch
            if (-f "{directory}/{ROTATION_LOCK}") {{
                rewrite ^ /_rotating$uri last;
            }}
{proxy()}
            proxy_pass http://torchserve{i};
        }}
        location = /explanations/{settings.model} {{
{explain}
            if (-f "{directory}/{ROTATION_LOCK}") {{
                rewrite ^ /_rotating$uri last;
            }}
{proxy()}
            proxy_pass http://torchserve{i};
        }}
        # the rewrite comes before the limits are counted: a rotating request is counted
        # here, by the same limits and with the same refusals as above
        location /_rotating/ {{
            internal;
{error_pages("$refusal_shape", "node", settings.model, settings.max_body)}
            js_content gateway.rotating;
        }}
        location = /_rotating/explanations/{settings.model} {{
            internal;
{explain}
            js_content gateway.rotating;
        }}
{send("_send", "$node_key", i)}
{send("_resend", "$node_key_resent", i)}
        location @node_down {{
            return 444;
        }}
        location ^~ /refusals/ {{
            internal;
            root {static};
            add_header Retry-After $retry_after always;
        }}
    }}""")
    return upstream, "\n\n".join(blocks)


def metrics_node(settings: GatewaySettings, nodes: list[Node]) -> str:
    """host:port of the TorchServe metrics the metrics listener proxies to: the one node's
    (a pod's gateway has one; Prometheus scrapes each pod's own). ValueError when the
    listener is on with several nodes, or with a node whose metrics it cannot reach."""
    if settings.metrics_port is None:  # off: nothing connects, any node's address will do
        return next((n.metrics for n in nodes if n.metrics), "127.0.0.1:8082")
    if settings.metrics_port == settings.port:
        raise ValueError("the metrics port must differ from the gateway's port")
    if len(nodes) != 1:
        raise ValueError("the metrics listener serves one node's metrics: give one --node with --metrics-port")
    if nodes[0].metrics is None:
        raise ValueError("the node's metrics_address is not http://HOST:PORT: the metrics listener cannot reach it")
    return nodes[0].metrics


def client_listen(settings: GatewaySettings, workdir: Path) -> str:
    """nginx.conf's client-port listener: the port, or with TLS (tls.conf's front has the
    port) a socket in the owner-only workdir that nothing connects to."""
    if settings.tls is not None:
        return f"unix:{Path(workdir).resolve() / CLIENT_OFF_SOCKET}"
    return f"{settings.listen}:{settings.port} backlog=4096"


def node_wait_s(settings: GatewaySettings) -> int:
    """The longest the API server waits for a node's block to answer: the node's own read
    timeout, after (during a key rotation) the wait of a request refused for its key, and a
    margin. The node's block times out first and counts as the node failing; the API
    server never gives up on (and sends elsewhere) a request its node still runs."""
    return settings.read_timeout_s + math.ceil(LOCK_MAX_AGE_S) + 5


def stream_timeout(settings: GatewaySettings) -> str:
    """The client-port front only outlasts the API server's own longest wait."""
    return f"{max(settings.idle_timeout_s, node_wait_s(settings)) + 30}s"


def _process_fields(settings: GatewaySettings) -> dict[str, str]:
    """The fields of both configs' main context: the user, the file and connection limits."""
    return {
        # Started as root, nginx runs its workers as nobody, who could not open the node
        # sockets in the (owner-only) work directory: keep them the starting user.
        "USER": "user root;\n" if os.geteuid() == 0 else "",
        "WORKER_CONNECTIONS": str(settings.worker_connections),
        "NOFILE": str(2 * settings.worker_connections + 64),
    }


def _fill(template: Path, fields: dict[str, str], *functions: tuple[str, Callable[[str, str], str]]) -> str:
    """`template` with each @NAME@ replaced by its field and each @FUNCTION(a,b)@ by what
    that function gives for (a, b); ValueError if any field is left unrendered."""
    text = template.read_text()
    for name, value in fields.items():
        text = text.replace(f"@{name}@", value)
    for name, function in functions:

        def call(match: re.Match[str], function: Callable[[str, str], str] = function) -> str:
            return function(match[1], match[2])

        text = re.sub(rf"@{name}\((\w+),(\w+)\)@", call, text)
    left = re.findall(r"@[A-Z_]+(?:\([^)]*\))?@", text)
    if left:
        raise ValueError(f"template fields left unrendered: {left}")
    return text


def render_tls(settings: GatewaySettings, workdir: Path) -> str:
    """tls.conf: the TLS front of the client port (tls.conf.template)."""
    tls = settings.tls
    if tls is None:
        raise ValueError("render_tls: no TLS settings")
    workdir = Path(workdir).resolve()
    fields = {
        "STREAM_MODULE": MODULES["STREAM_MODULE"][0],
        **_process_fields(settings),
        "LISTEN": settings.listen,
        "PORT": str(settings.port),
        "CONN_PER_ADDRESS": str(settings.conn_per_address),
        "TLS_CERT": _check_config_string(os.path.realpath(tls.cert_file), "the TLS certificate's path"),
        "TLS_KEY": _check_config_string(os.path.realpath(tls.key_file), "the TLS key's path"),
        "TLS_PROTOCOLS": PROTOCOLS,
        "TLS_CIPHERS": CIPHERS,
        "TLS_HANDSHAKE_TIMEOUT": f"{tls.handshake_timeout_s}s",
        "API_SOCKET": str(workdir / API_SOCKET),
        "STREAM_TIMEOUT": stream_timeout(settings),
    }
    return _fill(TLS_TEMPLATE, fields)


def render(settings: GatewaySettings, nodes: list[Node], workdir: Path) -> str:
    workdir = Path(workdir).resolve()
    upstream, node_servers = _node_servers(settings, nodes, workdir)
    clients_file = settings.clients if isinstance(settings.clients, Path) else workdir / CLIENTS_FILE
    jwt = settings.jwt
    fields = {
        **{name: path for name, (path, _) in MODULES.items()},
        "JS_FILE": str(SCRIPT),
        **_process_fields(settings),
        "LISTEN": settings.listen,
        "PORT": str(settings.port),
        "CLIENT_LISTEN": client_listen(settings, workdir),
        "CLIENTS_FILE": _check_config_string(str(Path(clients_file).resolve()), "the clients file's path"),
        "JWT_SECRET_FILE": _check_config_string(
            str(Path(jwt.secret_file).resolve()) if jwt else "", "the JWT secret's path"
        ),
        "JWT_AUDIENCE": _check_config_string(jwt.audience if jwt else "", "the JWT audience"),
        "JWT_ISSUER": _check_config_string(jwt.issuer if jwt else "", "the JWT issuer"),
        "JWT_MAX_LIFETIME": str(jwt.max_lifetime_s if jwt else 0),
        # gateway.js's rotating: past this age a rotation lock is stale (common/keys.py)
        "ROTATION_LOCK_MAX_AGE_MS": str(round(LOCK_MAX_AGE_S * 1000)),
        "KEY_FILE": KEY_FILE,
        "ROTATION_LOCK": ROTATION_LOCK,
        "RATE": str(settings.rate_per_s),
        "BURST": str(settings.burst),
        "PROBE_RATE": str(settings.probe_rate_per_s),
        "PROBE_BURST": str(settings.probe_burst),
        "PROBE_LIMITS": f"""            limit_req zone=per_address burst={settings.probe_burst} nodelay;
            limit_conn probes_per_address {settings.probes_in_progress_per_address};
            client_max_body_size {PROBE_MAX_BODY};""",
        "PROBE_MAX_BODY": PROBE_MAX_BODY,
        "EXPLAIN_RATE": str(settings.explain_rate_per_s),
        "EXPLAIN_BURST": str(settings.explain_burst),
        "AUTH_FAILURE_RATE": str(settings.auth_failure_rate_per_s),
        "AUTH_FAILURE_BURST": str(settings.auth_failure_burst),
        "LINGERING_TIME": f"{settings.lingering_time_s}s",
        "RETRY_AFTER_STATUSES": "\n".join(f"        {status} 1;" for status in RETRY_AFTER),
        "API_SOCKET": str(workdir / API_SOCKET),
        "STREAM_TIMEOUT": stream_timeout(settings),
        "MODEL_RE": re.escape(settings.model),
        "UPSTREAM_SERVERS": upstream,
        "NODE_SERVERS": node_servers,
        "NODE_HEADERS": NODE_HEADERS,
        "PROTOCOL_MAP": protocol_map(),
        "ROUTE_MAP": route_map(settings.model),
        "PROTOCOL_VARIABLE": nginx_variable(contract.PROTOCOL_HEADER),
        "REQUEST_ID_HEADER": contract.REQUEST_ID_HEADER,
        "REQUEST_ID_VARIABLE": nginx_variable(contract.REQUEST_ID_HEADER),
        "REQUEST_ID_PATTERN": contract.REQUEST_ID_PATTERN,
        "REQUEST_ID_PARAM": contract.REQUEST_ID_PARAM,
        "CLIENT_VARIABLE": nginx_variable(CLIENT_HEADER),
        "MAX_BODY": settings.max_body,
        "PROXY_READ_TIMEOUT": f"{node_wait_s(settings)}s",
        "CLIENT_TIMEOUT": f"{settings.client_timeout_s}s",
        "IDLE_TIMEOUT": f"{settings.idle_timeout_s}s",
        "CONN_PER_KEY": str(settings.conn_per_key),
        "OPEN_TOTAL": str(open_total(settings, len(nodes))),
        "CONN_PER_ADDRESS": str(settings.conn_per_address),
        "MODEL": settings.model,
        "DRAINING_FILE": str(workdir / DRAINING_FILE),
        "STATIC": str(workdir / STATIC_DIR),
        # the metrics listener (--metrics-port): its stream front and its server
        "METRICS_LISTEN": (
            f"{settings.listen}:{settings.metrics_port}"
            if settings.metrics_port is not None
            else f"unix:{workdir / METRICS_OFF_SOCKET}"
        ),
        "METRICS_SOCKET": str(workdir / METRICS_SOCKET),
        "METRICS_NODE": metrics_node(settings, nodes),
        "METRICS_CONN_PER_ADDRESS": str(settings.metrics_conn_per_address),
        "METRICS_TIMEOUT": f"{settings.metrics_timeout_s}s",
        "METRICS_IDLE_TIMEOUT": f"{settings.metrics_idle_timeout_s}s",
        "METRICS_NODE_TIMEOUT": f"{settings.metrics_node_timeout_s}s",
        # the metrics server times connections out; this only outlasts its longest wait
        "METRICS_STREAM_TIMEOUT": str(
            max(settings.metrics_idle_timeout_s, settings.metrics_node_timeout_s + settings.metrics_timeout_s) + 10
        )
        + "s",
        "LATENCY_SOCKET": str(workdir / LATENCY_SOCKET),
        "LATENCY_FILE": str(workdir / STATIC_DIR / EXPOSITION),
        "METRICS_RATE": str(settings.metrics_rate_per_s),
        "METRICS_BURST": str(settings.metrics_burst),
    }
    return _fill(
        TEMPLATE,
        fields,
        ("REFUSE", lambda shape, name: refuse(shape, name, settings.model, settings.max_body)),
        ("ERRORS", lambda shape, kind: error_pages(shape, kind, settings.model, settings.max_body)),
    )


class ReadinessPoller:
    """Keeps the link <workdir>/static/ready while some node answers: every `interval` seconds a fixed
    prediction to each node with its key. A node is ready when it answered 200; when it
    is busy (a full queue's 503, or no answer within the probe's timeout) it stays ready
    as long as its workers are (TorchServe's /ping); anything else (refused connection, a
    dead worker, a wrong key, a truncated or garbled answer, a key file it cannot read) and
    it is not. During a key rotation (a fresh lock, common/keys.py) a node keeps its state;
    a stale lock is ignored. Probes from outside read the file, so they cost the nodes nothing.

    Nothing that one node does stops the polling: any exception while checking a node makes
    that node not ready (logged once, by its type, until the node's check succeeds again).
    `last_poll` is when the last round ended; progressing() says whether the thread is
    alive and rounds keep ending (the gateway's runner exits when not: gateway/__main__.py)."""

    PROBE_BODY = b'{"text": "readiness probe"}'
    STALL_MARGIN_S = 5.0  # scheduling, key files: beyond the probes' own timeouts

    def __init__(self, workdir: Path, nodes: list[Node], model: str, interval: float, timeout: float = 10.0):
        self.ready_link = Path(workdir) / STATIC_DIR / READY_LINK
        self.nodes, self.model, self.interval, self.timeout = nodes, model, interval, timeout
        self.state = [False] * len(nodes)
        self.last_poll = time.monotonic()
        # the longest a round can take: per node a prediction and a ping, each a connect and
        # an answer within `timeout` (a frozen node's), and the wait between rounds
        self.stall_after = interval + 4 * timeout * len(nodes) + self.STALL_MARGIN_S
        self._errors: list[str | None] = [None] * len(nodes)  # each node's failing exception type
        self._round_error: str | None = None
        self._stop = threading.Event()
        self._round = threading.Lock()  # held through each round; paused() takes it
        self._thread = threading.Thread(target=self._run, name="readiness-poller", daemon=True)

    def _node_ready(self, node: Node, was_ready: bool) -> bool:
        if lock_is_fresh(node.directory / ROTATION_LOCK):
            return was_ready
        try:
            key = node.key()
        except (OSError, ValueError, KeyError):  # not written yet, or half written
            return False
        if not isinstance(key, str):
            raise TypeError(f"the inference key is a {type(key).__name__}")
        auth = {"Authorization": f"Bearer {key}"}
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
        # busy: a node that was ready stays ready while its workers are. One never seen
        # ready is not: a worker still in initialize() (the explainer loads there) keeps
        # the probe queued, and TorchServe's /ping already says healthy
        if status == 503 and was_ready:
            try:
                return http(f"{base}/ping", headers=auth, timeout=self.timeout)[0] == 200
            except OSError:
                return False
        return False

    def _check(self, index: int, node: Node, was_ready: bool) -> bool:
        """Node `index` (0-based) ready; any exception makes it not ready, and is logged by
        its type (never its message, which could quote a key) when it starts failing so."""
        try:
            ready = self._node_ready(node, was_ready)
        except Exception as e:  # a truncated or garbled answer, an odd key file, a bug
            error = type(e).__name__
            if self._errors[index] != error:
                events.log("gateway", "readiness check failed: node not ready", node=index + 1, error=error)
            self._errors[index] = error
            return False
        self._errors[index] = None
        return ready

    def poll_once(self) -> bool:
        self.state = [
            self._check(i, node, was) for i, (node, was) in enumerate(zip(self.nodes, self.state, strict=True))
        ]
        ready = any(self.state)
        if ready and not self.ready_link.is_symlink():
            tmp = self.ready_link.with_name(READY_LINK + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(READY_ANSWERS)
            os.replace(tmp, self.ready_link)
        elif not ready:
            self.ready_link.unlink(missing_ok=True)
        self.last_poll = time.monotonic()
        return ready

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self._round:
                    self.poll_once()
                self._round_error = None
            except Exception as e:  # the link could not be written: tried again next period
                error = type(e).__name__
                if self._round_error != error:
                    events.log("gateway", "readiness poll failed", error=error)
                self._round_error = error

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No probe in flight and none sent while inside: for a count of a node's
        predictions that only its clients changed (the round under way ends first)."""
        with self._round:
            yield

    def progressing(self) -> bool:
        """Whether the thread is alive and its last round ended within `stall_after`."""
        return self._thread.is_alive() and time.monotonic() - self.last_poll <= self.stall_after

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
    # with TLS: the client port's TLS front (tls.conf), an nginx of its own
    tls_proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    poller: ReadinessPoller | None = field(default=None, init=False)
    latency: LatencyCollector | None = field(default=None, init=False)  # gateway/latency.py

    @property
    def host(self) -> str:
        """Where this machine reaches the gateway."""
        return "127.0.0.1" if self.settings.listen == "0.0.0.0" else self.settings.listen

    @property
    def scheme(self) -> str:
        return "https" if self.settings.tls is not None else "http"

    def url(self, path: str = "") -> str:
        return f"{self.scheme}://{self.host}:{self.settings.port}{path}"

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
        for name, body in refusal_files(self.settings.model, self.settings.max_body).items():
            (static / REFUSALS_DIR / name).parent.mkdir(parents=True, exist_ok=True)
            (static / REFUSALS_DIR / name).write_text(body)
        if isinstance(self.settings.clients, dict):
            lines = "".join(f"{n}={k}\n" for n, k in check_clients(self.settings.clients).items())
            _write_private(self.workdir / CLIENTS_FILE, lines)
        else:
            check_clients(read_clients_file(self.settings.clients))
        config = self.workdir / "nginx.conf"
        _write_private(config, render(self.settings, nodes, self.workdir))
        if self.settings.tls is not None:
            self.write_tls_config()
        return config

    def write_tls_config(self) -> Path:
        config = self.workdir / TLS_CONFIG
        _write_private(config, render_tls(self.settings, self.workdir))
        return config

    def processes(self) -> list[subprocess.Popen[bytes]]:
        """The nginx processes running: the gateway's, and with TLS its TLS front."""
        return [p for p in (self.proc, self.tls_proc) if p is not None]

    def _nginx(self, *args: str, config: str = "nginx.conf") -> list[str]:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise FileNotFoundError(
                "nginx is missing: apt-get install nginx-light " + " ".join(p for _, p in MODULES.values())
            )
        for module, package in MODULES.values():
            if not Path(module).exists():
                raise FileNotFoundError(f"{module} is missing: apt-get install {package}")
        return [binary, "-p", str(self.workdir), "-e", "stderr", "-c", str(self.workdir / config), *args]

    def start(self, nodes: list[Node], timeout: float = 15.0) -> Gateway:
        self.write_config(nodes)
        (self.workdir / DRAINING_FILE).unlink(missing_ok=True)
        # A gateway killed outright (SIGKILL, the OOM killer) leaves its unix sockets behind and
        # nginx cannot bind over them: in a pod whose workdir (an emptyDir) outlives the container,
        # every restart failed. The workdir is this gateway's own: what is there is stale.
        for index in range(1, len(nodes) + 1):
            node_socket(self.workdir, index).unlink(missing_ok=True)
        for name in (API_SOCKET, METRICS_SOCKET, METRICS_OFF_SOCKET, CLIENT_OFF_SOCKET):
            (self.workdir / name).unlink(missing_ok=True)
        configs = ["nginx.conf"] + ([TLS_CONFIG] if self.settings.tls is not None else [])
        for config in configs:
            check = subprocess.run(self._nginx("-t", "-q", config=config), capture_output=True, text=True)
            if check.returncode != 0:
                raise RuntimeError(f"nginx refused {config}:\n{check.stderr}")
        # bound before nginx starts, so that no request's datagram is lost
        self.latency = LatencyCollector(self.workdir, self.workdir / STATIC_DIR / EXPOSITION).start()
        log = open(self.log_file, "ab") if self.log_file is not None else None
        procs = []
        for config in configs:
            command = self._nginx("-g", "daemon off;", config=config)
            procs.append(subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True))
        self.proc = procs[0]
        self.tls_proc = procs[1] if len(procs) > 1 else None
        if log is not None:
            log.close()

        def alive() -> None:
            if any(p.poll() is not None for p in procs):
                tail = self.log_file.read_text()[-2000:] if self.log_file is not None else ""
                raise RuntimeError(f"nginx exited: {tail}")

        try:
            wait_for_port(self.host, self.settings.port, timeout, alive)
            # with TLS the port is the TLS front's, which may be up before the API's server
            # behind it: a request then would get no answer. Both, before anyone is told.
            _wait_for_unix_socket(self.workdir / API_SOCKET, timeout, alive)
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
        if self.settings.tls is not None:
            self.reload_tls()

    def reload_tls(self) -> None:
        """The TLS front alone re-reads its certificate and key (a renewal): its old worker
        carries the connections it has to their end, new ones get the new pair. Raises
        subprocess.CalledProcessError when nginx refuses the new pair (the old is kept)."""
        self.write_tls_config()
        subprocess.run(self._nginx("-t", "-q", config=TLS_CONFIG), check=True, capture_output=True)
        if self.tls_proc is None:
            raise RuntimeError("reload: the TLS front was not started")
        self.tls_proc.send_signal(signal.SIGHUP)

    def set_draining(self) -> None:
        """/readyz answers 503 from now on; everything else is served as before."""
        (self.workdir / DRAINING_FILE).touch()

    def stop(self) -> None:
        """Graceful: nginx closes its port, answers the requests in flight, then exits."""
        if self.poller is not None:
            self.poller.stop()
            self.poller = None
        # both at once: the TLS front stops accepting and carries its connections on until
        # the gateway's server (answering what is in flight) closes them
        procs = self.processes()
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGQUIT)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.settings.read_timeout_s + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        self.proc = self.tls_proc = None
        self._stop_latency()  # after nginx: the last requests' datagrams counted

    def _stop_latency(self) -> None:
        if self.latency is not None:
            self.latency.stop()
            self.latency = None


def _wait_for_unix_socket(path: Path, timeout: float, alive: Callable[[], None]) -> None:
    """Wait until something accepts connections on the unix socket at `path`."""
    deadline = time.monotonic() + timeout
    while True:
        alive()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nothing listens on {path} after {timeout:.0f}s") from None
        time.sleep(0.05)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds keys), replacing it in one step."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
