"""Model lifecycle through TorchServe's management API, with the key from key_file.json.

    python -m clients.manage list
    python -m clients.manage describe sentiment [VERSION]
    python -m clients.manage register sentiment-torch.mar [--batch-size 16] [--max-batch-delay 2]
                                      [--workers 2] [--response-timeout 60]
    python -m clients.manage scale sentiment [VERSION] --workers 3
    python -m clients.manage set-default sentiment 2.0
    python -m clients.manage unregister sentiment [VERSION]

Addresses come from --config (the repo's config.properties), the key from --key-file
(./key_file.json, where `make serve` has TorchServe write it). Prints TorchServe's JSON
answer; exits 1 with its error message when the call fails.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

from clients.torchserve import TorchServeClient
from common.paths import CONFIG
from common.torchserve_files import KEY_FILE


def _model_path(name: str, version: str | None) -> str:
    return f"/models/{quote(name, safe='')}" + (f"/{quote(version, safe='')}" if version else "")


def _query(**params: object) -> str:
    present = {k: v for k, v in params.items() if v is not None}
    return "?" + urlencode(present) if present else ""


def call(client: TorchServeClient, args: argparse.Namespace) -> tuple[int, object]:
    if args.command == "list":
        return client.management("/models")
    if args.command == "describe":
        return client.management(_model_path(args.name, args.version))
    if args.command == "register":
        # synchronous: answer once the workers are up (or failed)
        query = _query(
            url=args.archive,
            batch_size=args.batch_size,
            max_batch_delay=args.max_batch_delay,
            initial_workers=args.workers,
            response_timeout=args.response_timeout,
            synchronous="true",
        )
        return client.management("/models" + query, "POST", timeout=300)
    if args.command == "scale":
        query = _query(min_worker=args.min_workers, max_worker=args.max_workers, synchronous="true")
        return client.management(_model_path(args.name, args.version) + query, "PUT", timeout=300)
    if args.command == "set-default":
        return client.management(_model_path(args.name, args.version) + "/set-default", "PUT")
    if args.command == "unregister":
        return client.management(_model_path(args.name, args.version), "DELETE", timeout=300)
    raise ValueError(args.command)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.manage", description=__doc__.splitlines()[0])
    p.add_argument(
        "--config",
        type=Path,
        default=CONFIG,
        help="config.properties with the management address (default: the repo's)",
    )
    p.add_argument(
        "--key-file", type=Path, default=Path(KEY_FILE), help="TorchServe's key_file.json (default: ./key_file.json)"
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered models")
    d = sub.add_parser("describe", help="a model's versions, settings and workers")
    d.add_argument("name")
    d.add_argument("version", nargs="?")
    r = sub.add_parser("register", help="register an archive from the model store")
    r.add_argument("archive", help="file name of a .mar in the model store")
    r.add_argument("--batch-size", type=int)
    r.add_argument("--max-batch-delay", type=int, help="ms")
    r.add_argument("--workers", type=int, help="initial workers")
    r.add_argument("--response-timeout", type=int, help="s")
    s = sub.add_parser("scale", help="set a model version's worker count")
    s.add_argument("name")
    s.add_argument("version", nargs="?")
    s.add_argument("--workers", type=int, help="min and max workers")
    s.add_argument("--min-workers", type=int)
    s.add_argument("--max-workers", type=int)
    s.add_argument("--allow-zero", action="store_true", help="allow 0 workers (the version stops serving)")
    sd = sub.add_parser("set-default", help="make a version the default one")
    sd.add_argument("name")
    sd.add_argument("version")
    u = sub.add_parser("unregister", help="unregister a model version (the default one if none given)")
    u.add_argument("name")
    u.add_argument("version", nargs="?")
    return p


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def refusal(args: argparse.Namespace) -> str | None:
    """Why TorchServe must not be called with these arguments, if it must not. TorchServe
    itself accepts negative worker counts (and removes every worker), batch sizes below
    1 and names with path characters."""
    for what in ("name", "version"):
        value = getattr(args, what, None)
        if value is not None and (not NAME_PATTERN.fullmatch(value) or ".." in value):
            return f"a model {what} is letters, digits, '_', '.' and '-', not {value!r}"
    archive = getattr(args, "archive", None)
    if archive is not None and (not NAME_PATTERN.fullmatch(archive) or ".." in archive or not archive.endswith(".mar")):
        return f"an archive is the file name of a .mar in the model store, not {archive!r}"
    for what in ("workers", "min_workers", "max_workers"):
        value = getattr(args, what, None)
        if value is not None and value < 0:
            return f"--{what.replace('_', '-')} must be 0 or more, not {value}"
    if args.command == "register" and args.workers == 0:
        return "--workers must be 1 or more for a new registration"
    if args.command == "scale":
        if args.min_workers is None and args.max_workers is None:
            return "scale needs --workers or --min-workers/--max-workers"
        if None not in (args.min_workers, args.max_workers) and args.min_workers > args.max_workers:
            return "--min-workers must not be more than --max-workers"
        if args.max_workers == 0 and not args.allow_zero:
            return (
                "--workers 0 stops serving this version; pass --allow-zero if that is what you want (or unregister it)"
            )
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        return f"--batch-size must be 1 or more, not {args.batch_size}"
    if getattr(args, "max_batch_delay", None) is not None and args.max_batch_delay < 0:
        return f"--max-batch-delay must be 0 or more, not {args.max_batch_delay}"
    if getattr(args, "response_timeout", None) is not None and args.response_timeout < 1:
        return f"--response-timeout must be 1 or more, not {args.response_timeout}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "scale" and args.workers is not None:
        args.min_workers = args.max_workers = args.workers
    problem = refusal(args)
    if problem:
        print(f"refused, TorchServe was not called: {problem}", file=sys.stderr)
        return 2
    if not args.key_file.is_file():
        print(f"{args.key_file} not found: start TorchServe first (make serve) or pass --key-file", file=sys.stderr)
        return 1
    client = TorchServeClient.from_config(args.config, args.key_file)
    try:
        status, answer = call(client, args)
    except OSError as e:
        print(f"cannot reach TorchServe at {client.management_url}: {e}", file=sys.stderr)
        return 1
    if 200 <= status < 300:
        print(json.dumps(answer, indent=2))
        return 0
    message = answer.get("message", answer) if isinstance(answer, dict) else answer
    print(f"TorchServe answered {status}: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
