"""Run the nginx gateway in front of TorchServe nodes.

    python -m gateway --node DIR [--node DIR ...] --client NAME=KEY [--port 8000]

Each --node is a directory a TorchServe was started from (config.properties and
key_file.json inside, as `make serve` leaves the repo root); each --client a key that
clients send as `Authorization: Bearer KEY`. Runs nginx in the foreground until Ctrl-C
or SIGTERM. After a node's keys rotate (python -m clients.keys rotate), send this
process SIGHUP: it re-reads every node's key_file.json and reloads nginx without
dropping requests.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from gateway.nginx import Gateway, GatewaySettings, Node
from server.paths import ROOT


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.splitlines()[0])
    p.add_argument("--node", action="append", type=Path, required=True,
                   help="directory a TorchServe node runs in (config.properties, key_file.json)")
    p.add_argument("--client", action="append", required=True, help="NAME=KEY of a gateway client")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--listen", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    p.add_argument("--rate", type=int, default=50, help="requests/s per client")
    p.add_argument("--burst", type=int, default=100)
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "gateway")
    args = p.parse_args(argv)
    clients = dict(c.split("=", 1) for c in args.client)
    nodes = [Node.from_dir(d) for d in args.node]
    settings = GatewaySettings(args.port, clients, args.rate, args.burst, listen=args.listen)
    gateway = Gateway(args.workdir, settings).start(nodes)
    signal.signal(signal.SIGHUP, lambda *_: gateway.reload([Node.from_dir(d) for d in args.node]))
    signal.signal(signal.SIGTERM, lambda *_: gateway.stop())
    print(f"gateway on {gateway.url()} in front of {len(nodes)} node(s); Ctrl-C stops it, "
          f"SIGHUP to pid {os.getpid()} reloads the node keys", file=sys.stderr)
    try:
        while gateway.proc is not None and gateway.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
