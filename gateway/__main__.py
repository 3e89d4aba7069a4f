"""Run the nginx gateway in front of TorchServe nodes.

    python -m gateway --node DIR [--node DIR ...] (--client NAME=KEY ... | --clients-file FILE)
                      [--jwt-secret-file FILE --jwt-audience AUD --jwt-issuer ISS [--jwt-max-lifetime S]]
                      [--port 8000] [--listen 127.0.0.1] [--metrics-port PORT]
                      [--tls-cert-file FILE --tls-key-file FILE]
                      [--drain-delay 0] [--drained-marker FILE]

Each --node is a directory a TorchServe was started from (config.properties and
key_file.json inside, as `make serve` leaves the repo root, or the volume the TorchServe
container shares); each client key is what clients send as `Authorization: Bearer KEY`
(16-512 characters of RFC 6750's token alphabet), given on the command line or, better
(no keys in the process list), in a file of NAME=KEY lines (a mounted Secret). With
--jwt-secret-file (a secret of 32 bytes at least), JSON Web Tokens signed HS256 with that
secret, naming that audience and issuer and expiring within --jwt-max-lifetime (an hour),
are taken too, each limited as a client of its own by its subject. Waits for the nodes'
key files, then runs nginx until Ctrl-C or SIGTERM; nginx's access log (JSON lines) goes
to standard output.

Keys: the clients file, the JWT secret and each node's key_file.json are read on every
request, so a changed client key or a TorchServe key rotation counts at once with no
reload (during a rotation through sentiment-keys or the TorchServe supervisor, a request
refused for the old key is sent again with the new one: none is lost, docs/gateway.md).
SIGHUP re-renders nginx's config and reloads it gracefully.

With --metrics-port (one --node), GET /metrics on that port answers the node's TorchServe
metrics, for Prometheus, so that TorchServe's own metrics port stays on loopback; the
port has limits of its own (connections and scrapes per address, timeouts). GET
/metrics/gateway there answers the gateway's own histogram of client-seen latency by
route and status, which a thread of this process keeps (gateway/latency.py).

With --tls-cert-file and --tls-key-file (a certificate chain and its unencrypted key,
PEM: a cert-manager Secret's tls.crt and tls.key), the client port speaks TLS 1.2 and
1.3 only; plain HTTP to it fails the handshake and gets no answer. The files are checked
every half second: once both hold a new pair whose key is its certificate's (a renewal; a
Kubernetes Secret's update swaps both at once), nginx reloads gracefully and serves it.
A pair half written or mismatched is logged and not loaded: the old one is served on.

SIGTERM drains: /readyz answers 503 at once (load balancers stop sending), new requests
are still served for --drain-delay seconds (while they notice), then nginx stops
accepting, answers what is in flight and exits; then --drained-marker is written (the
TorchServe container waits for it before it stops) and the gateway exits 0.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import contract, events
from common.paths import ROOT
from gateway.nginx import Gateway, GatewaySettings, JwtSettings, Node, check_clients, read_clients_file
from gateway.tls import CertificateWatch, TlsSettings, world_readable


def log(message: str) -> None:
    events.log("gateway", message)


def wait_for_nodes(dirs: list[Path], timeout: float, stopping: threading.Event) -> list[Node]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            nodes = [Node.from_dir(d) for d in dirs]
            for node in nodes:
                node.key()  # its key file is written
            return nodes
        except (FileNotFoundError, KeyError, ValueError):  # a node not started yet, a file half written
            if time.monotonic() > deadline or stopping.is_set():
                raise
            time.sleep(0.5)


def renew(gateway: Gateway, watch: CertificateWatch) -> None:
    """A new valid certificate and key: the TLS front reloads gracefully (connections open
    go on with the old pair until they close, new ones get the new; the gateway's HTTP
    server is not reloaded, so no keep-alive connection is closed). A pair nginx refuses
    keeps the old one served, and is tried again once the files change again."""
    pair = watch.check()
    if pair is None:
        return
    try:
        gateway.reload_tls()
    except (subprocess.CalledProcessError, OSError, ValueError) as e:
        log(f"TLS: nginx refused the new certificate, still serving the old one ({type(e).__name__})")
        watch.loaded = pair.digest  # not again until the files change
        return
    watch.loaded = pair.digest
    log(f"TLS: nginx reloaded with the certificate of SHA-256 {pair.fingerprint}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.splitlines()[0])
    p.add_argument(
        "--node",
        action="append",
        type=Path,
        required=True,
        help="directory a TorchServe node runs in (config.properties, key_file.json)",
    )
    p.add_argument("--client", action="append", default=[], help="NAME=KEY of a gateway client")
    p.add_argument("--clients-file", type=Path, help="a file of NAME=KEY lines, read on every request")
    p.add_argument("--jwt-secret-file", type=Path, help="accept HS256 JSON Web Tokens signed with this secret")
    p.add_argument("--jwt-audience", default="", help="the aud a token must name (required with tokens)")
    p.add_argument("--jwt-issuer", default="", help="the iss a token must name (required with tokens)")
    p.add_argument(
        "--jwt-max-lifetime",
        type=int,
        default=JwtSettings.max_lifetime_s,
        help="seconds: a token whose exp is further ahead is refused",
    )
    p.add_argument("--port", type=int, default=contract.GATEWAY_PORT)
    p.add_argument("--listen", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve the node's TorchServe metrics (GET /metrics only) on this port of --listen, for "
        "Prometheus, behind limits of its own (default: off)",
    )
    p.add_argument(
        "--tls-cert-file",
        type=Path,
        help="serve TLS on --port with this certificate chain (PEM; with --tls-key-file); renewals are reloaded",
    )
    p.add_argument("--tls-key-file", type=Path, help="the certificate's private key (PEM, unencrypted)")
    p.add_argument("--rate", type=int, default=GatewaySettings.rate_per_s, help="requests/s per client")
    p.add_argument("--burst", type=int, default=GatewaySettings.burst)
    p.add_argument(
        "--in-flight-per-node",
        type=int,
        default=GatewaySettings.in_flight_per_node,
        help="requests in progress per node, all clients together; past it 429 at once",
    )
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "gateway")
    p.add_argument("--wait-for-nodes", type=float, default=300.0, help="seconds to wait for the key files")
    p.add_argument(
        "--drain-delay",
        type=float,
        default=0.0,
        help="seconds between failing /readyz and closing the port, on SIGTERM",
    )
    p.add_argument("--drained-marker", type=Path, help="file written once the gateway has drained")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.clients_file is not None and args.client:
        parser().error("give --client or --clients-file, not both")
    try:
        if args.clients_file is not None:
            clients: dict[str, str] | Path = args.clients_file.resolve()
            has_clients = bool(check_clients(read_clients_file(args.clients_file)))
        else:
            clients = check_clients(dict(c.split("=", 1) for c in args.client))
            has_clients = bool(clients)
    except (OSError, ValueError) as e:
        parser().error(str(e))
    if not has_clients and args.jwt_secret_file is None:
        parser().error("no client keys: give --client NAME=KEY, --clients-file or --jwt-secret-file")
    jwt = None
    if args.jwt_secret_file is not None:
        try:
            jwt = JwtSettings(args.jwt_secret_file, args.jwt_audience, args.jwt_issuer, args.jwt_max_lifetime)
        except ValueError as e:  # names the rule and the file, never the secret
            parser().error(str(e))
    elif args.jwt_audience or args.jwt_issuer:
        parser().error("--jwt-audience and --jwt-issuer go with --jwt-secret-file")
    tls = None
    if (args.tls_cert_file is None) != (args.tls_key_file is None):
        parser().error("--tls-cert-file and --tls-key-file go together")
    if args.tls_cert_file is not None:
        try:
            tls = TlsSettings(args.tls_cert_file, args.tls_key_file)
        except ValueError as e:  # names the file and the reason, never the key
            parser().error(str(e))
        if world_readable(args.tls_key_file):
            log(f"TLS: the key file {args.tls_key_file} is readable by every user: mode 0400 or 0440 is enough")
    if args.metrics_port is not None and len(args.node) != 1:
        parser().error("--metrics-port serves one node's metrics: give one --node")
    if args.drained_marker is not None:
        args.drained_marker.unlink(missing_ok=True)

    stopping, reload_now = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGHUP, lambda *_: reload_now.set())

    nodes = wait_for_nodes(args.node, args.wait_for_nodes, stopping)
    settings = GatewaySettings(args.port, clients, args.rate, args.burst, listen=args.listen, jwt=jwt)
    settings.in_flight_per_node = args.in_flight_per_node
    settings.metrics_port = args.metrics_port
    settings.tls = tls
    watch = CertificateWatch(tls, log) if tls is not None else None
    gateway = Gateway(args.workdir, settings, output=None).start(nodes)
    log(f"gateway on {gateway.url()} in front of {len(nodes)} node(s)")
    if watch is not None:
        log(f"TLS: serving the certificate of SHA-256 {watch.fingerprint}")
    if settings.metrics_port is not None:
        log(f"metrics on {gateway.host}:{settings.metrics_port}/metrics")

    try:
        while not stopping.wait(0.5):
            if gateway.proc is None or gateway.proc.poll() is not None:
                log(f"nginx exited with {gateway.proc and gateway.proc.returncode}")
                return 1
            if tls is not None and (gateway.tls_proc is None or gateway.tls_proc.poll() is not None):
                log(f"nginx's TLS front exited with {gateway.tls_proc and gateway.tls_proc.returncode}")
                return 1
            # A readiness that stopped moving would say what was once true, forever. The
            # poller cannot be restarted beside a thread that may still wake up (two writers
            # of the link): not ready at once, and exit for the kubelet to restart us.
            poller = gateway.poller
            if poller is None or not poller.progressing():
                gateway.set_draining()
                if poller is not None:
                    poller.ready_link.unlink(missing_ok=True)
                log("the readiness poller stopped: exiting")
                return 1
            if reload_now.is_set():
                reload_now.clear()
                gateway.reload(nodes)
                log("SIGHUP: nginx reloaded")
            if watch is not None:
                renew(gateway, watch)
        gateway.set_draining()
        log(f"SIGTERM: draining ({args.drain_delay:g}s, then the requests in flight)")
        time.sleep(args.drain_delay)
    finally:
        gateway.stop()
        if args.drained_marker is not None:
            args.drained_marker.touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
