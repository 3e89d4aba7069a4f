"""Liveness of the TorchServe container: exit 0 when TorchServe's frontend answers /ping
with its key, 1 otherwise (no answer within --timeout, a refused connection, an error).

    python -m server.health [--workdir /run/torchserve] [--timeout 5]

The pod runs it as the TorchServe container's exec liveness and startup probe
(deploy/kubernetes/base/deployment.yaml): a hung or frozen frontend fails it and the
kubelet restarts this container, never the gateway. /ping answers from the frontend
without queueing behind predictions, so load does not fail it. Standard library only and
no torch import: it starts in well under a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common.net import http
from common.torchserve_files import KEY_FILE, read_keys, read_properties


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.health", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TS_WORKDIR", "/run/torchserve")))
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    try:
        address = read_properties(args.workdir / "config.properties")["inference_address"]
        key = read_keys(args.workdir / KEY_FILE)["inference"]
        status, _ = http(f"{address}/ping", headers={"Authorization": f"Bearer {key}"}, timeout=args.timeout)
    except (OSError, KeyError, ValueError) as e:
        print(f"TorchServe is not answering: {type(e).__name__}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"TorchServe answered /ping with {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
