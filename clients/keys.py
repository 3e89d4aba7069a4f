"""Rotate TorchServe's keys through its token API, and show when they expire.

    python -m clients.keys show                 # each key's expiry, never the keys
    python -m clients.keys rotate inference     # a new inference key (or: management)

Keys expire after token_expiration_min (config.properties); rotate before that, e.g.
from cron. TorchServe writes the new key into key_file.json, where clients that follow
the README read it: clients.torchserve.TorchServeClient re-reads the file and retries once
when TorchServe refuses its key. The API key (which rotates the others) does not expire.

A rotation takes a lock for a moment so that the gateways in front lose no request across
the switch: common/keys.py says how.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.keys import KINDS, rotate
from common.paths import CONFIG
from common.torchserve_files import KEY_FILE, expiries, read_properties


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.keys", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("show", "rotate"))
    p.add_argument("kind", nargs="?", choices=KINDS, default="inference")
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--key-file", type=Path, default=Path(KEY_FILE))
    args = p.parse_args(argv)
    if args.command == "show":
        for name, expiry in expiries(args.key_file).items():
            print(f"{name}: expires {expiry}")
        return 0
    management_url = read_properties(args.config).get("management_address", "http://127.0.0.1:8081")
    try:
        expiry = rotate(management_url, args.key_file, args.kind)
    except (RuntimeError, OSError) as e:
        print(f"rotation failed: {e}", file=sys.stderr)
        return 1
    print(f"new {args.kind} key written to {args.key_file}; it expires {expiry}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
