"""Run the nginx gateway in front of TorchServe nodes.

    python -m gateway --node DIR [--node DIR ...] (--client NAME=KEY ... | --clients-file FILE)
                      [--port 8000] [--listen 127.0.0.1] [--drain-delay 0] [--drained-marker FILE]

Each --node is a directory a TorchServe was started from (config.properties and
key_file.json inside, as `make serve` leaves the repo root, or the volume the TorchServe
container shares); each client key is what clients send as `Authorization: Bearer KEY`,
given on the command line or, better (no keys in the process list), in a file of
NAME=KEY lines (a mounted Secret). Waits for the nodes' key files, then runs nginx until
Ctrl-C or SIGTERM.

Keys: when a node's key_file.json changes (a rotation), the gateway re-reads it and
reloads nginx gracefully; SIGHUP does the same at once.

SIGTERM drains: /readyz answers 503 at once (load balancers stop sending), new requests
are still served for --drain-delay seconds (while they notice), then nginx stops
accepting, answers what is in flight and exits; then --drained-marker is written (the
TorchServe container waits for it before it stops) and the gateway exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from clients.torchserve import KEY_FILE
from gateway.nginx import Gateway, GatewaySettings, Node
from server.paths import ROOT


def read_clients_file(path: Path) -> dict[str, str]:
    clients = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, key = line.partition("=")
            clients[name.strip()] = key.strip()
    return clients


def wait_for_nodes(dirs: list[Path], timeout: float, stopping: threading.Event) -> list[Node]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return [Node.from_dir(d) for d in dirs]
        except (FileNotFoundError, KeyError, ValueError):  # a node not started yet, a file half written
            if time.monotonic() > deadline or stopping.is_set():
                raise
            time.sleep(0.5)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.splitlines()[0])
    p.add_argument("--node", action="append", type=Path, required=True,
                   help="directory a TorchServe node runs in (config.properties, key_file.json)")
    p.add_argument("--client", action="append", default=[], help="NAME=KEY of a gateway client")
    p.add_argument("--clients-file", type=Path, help="a file of NAME=KEY lines")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--listen", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    p.add_argument("--rate", type=int, default=50, help="requests/s per client")
    p.add_argument("--burst", type=int, default=100)
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "gateway")
    p.add_argument("--wait-for-nodes", type=float, default=300.0, help="seconds to wait for the key files")
    p.add_argument("--drain-delay", type=float, default=0.0,
                   help="seconds between failing /readyz and closing the port, on SIGTERM")
    p.add_argument("--drained-marker", type=Path, help="file written once the gateway has drained")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    clients = dict(c.split("=", 1) for c in args.client)
    if args.clients_file is not None:
        clients.update(read_clients_file(args.clients_file))
    if not clients:
        parser().error("no client keys: give --client NAME=KEY or --clients-file")
    if args.drained_marker is not None:
        args.drained_marker.unlink(missing_ok=True)

    stopping, reload_now = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGHUP, lambda *_: reload_now.set())

    nodes = wait_for_nodes(args.node, args.wait_for_nodes, stopping)
    settings = GatewaySettings(args.port, clients, args.rate, args.burst, listen=args.listen)
    gateway = Gateway(args.workdir, settings).start(nodes)
    print(f"gateway on {gateway.url()} in front of {len(nodes)} node(s)", file=sys.stderr, flush=True)

    def key_files_stamp() -> list[float]:
        return [(d / KEY_FILE).stat().st_mtime for d in args.node]

    stamp = key_files_stamp()
    try:
        while not stopping.wait(0.5):
            if gateway.proc.poll() is not None:
                print(f"nginx exited with {gateway.proc.returncode}", file=sys.stderr)
                return 1
            now = key_files_stamp()
            if now != stamp or reload_now.is_set():
                time.sleep(0.2)  # let TorchServe finish writing the file
                gateway.reload(wait_for_nodes(args.node, 30, stopping))
                stamp, _ = key_files_stamp(), reload_now.clear()
                print("node keys changed: nginx reloaded", file=sys.stderr, flush=True)
        gateway.set_draining()
        print(f"SIGTERM: draining ({args.drain_delay:g}s, then the requests in flight)", file=sys.stderr,
              flush=True)
        time.sleep(args.drain_delay)
    finally:
        gateway.stop()
        if args.drained_marker is not None:
            args.drained_marker.touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
