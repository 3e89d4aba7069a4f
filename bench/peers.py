"""The peers on the shipped int8 graph, side by side in one run: this project as shipped,
LitServe and mosec, each measured by wrk at concurrency 1, 16 and 64.

    .venv/bin/python -m bench.peers [--out bench/results]   (make bench runs it)

Every system runs the same graph (handlers/export_onnx.py's int8 export of the default
model) through the handler's own backend, tokenizer and micro-batching code, on the same
2,280 held-out tweets, one JSON body per request:

- this project: TorchServe with the shipped archive and config.properties' workers,
  batch size and delay, straight to port 8080 (the gateway's cost is bench/overload.py's);
- LitServe 0.2.19 (bench/litserve_app.py --onnx) and mosec 0.9.8 (bench/mosec_app.py):
  each one's batching swept first at concurrency 16 (SWEEP_SECONDS a setting, the same
  settings as bench/run.py's LitServe sweep), then its best setting at every concurrency.

Per system and concurrency: wrk (one thread, keep-alive connections) for 15 s at c=1 and
30 s at c=16 and c=64, after 3 s of warm-up at c=8. The per-core limit beside them: the
graph in one single-threaded process per core, in a loop (bench/raw.py), its best batch
size. The load generator shares the cores with the servers (nothing is pinned), as in
bench/run.py: read the ratios, which are the run's own. Writes peers.json to --out.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import time
from functools import partial
from pathlib import Path

from bench.run import (
    LITSERVE_SWEEP,
    MODEL_DIR,
    VARIANTS,
    archive,
    batching_label,
    http_app,
    litserve_command,
    litserve_env,
    raw_limit,
    raw_model_dir,
    serving,
    shipped_handler_options,
    shipped_model_settings,
    shipped_variant,
    ts_headers,
    workspace,
    write_results,
)
from bench.wrk import run_wrk
from common import events
from common.net import free_port
from training.tweets import split_tweets

SECONDS = {1: 15.0, 16: 30.0, 64: 30.0}
SWEEP_CONCURRENCY = 16
SWEEP_SECONDS = 15.0
WARMUP_SECONDS = 3.0
# mosec's dynamic batching: (max_batch_size, max_wait_time ms, workers, threads each): the
# settings bench/run.py sweeps LitServe's with, and batch 16 / 2 ms with 2 workers
MOSEC_SWEEP = ((8, 5, 1, 2), (16, 10, 1, 2), (16, 5, 2, 1), (16, 2, 2, 1), (32, 10, 1, 2))


def log(message: str) -> None:
    events.log("peers", message)


def mosec_command(port: int, setting: tuple[int, int, int, int], onnx_dir: Path) -> list[str]:
    """mosec at a MOSEC_SWEEP setting: (max_batch_size, max_wait_time ms, workers, threads each)."""
    batch, wait_ms, workers, threads = setting
    return [
        sys.executable,
        "-m",
        "bench.mosec_app",
        "--model",
        str(onnx_dir),
        "--port",
        str(port),
        "--address",
        "127.0.0.1",
        "--log-level",
        "warning",
        "--batch",
        str(batch),
        "--wait-ms",
        str(wait_ms),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--max-length",
        str(shipped_handler_options()["max_length"]),
    ]


def points(url: str, bodies: list[bytes], header=None, seconds: dict[int, float] = SECONDS) -> dict:
    """wrk's warm-up, then each concurrency for its seconds."""
    run_wrk(url, bodies, 8, WARMUP_SECONDS, header)
    out = {}
    for c, duration in seconds.items():
        r = run_wrk(url, bodies, c, duration, header)
        r.pop("output")
        log(
            f"  c={c:<3} {r['throughput_rps']:7.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
            f"errors {r['errors']}"
        )
        out[str(c)] = r
    return out


def peer(name: str, settings, command, path: str, work: Path, bodies: list[bytes], env=None) -> dict:
    """A peer's settings swept at SWEEP_CONCURRENCY, then its best at every concurrency."""
    sweep = {}
    for setting in settings:
        port = free_port()
        with http_app(command(port, setting), port, work, name, env):
            log(f" {name}, {batching_label(setting)}")
            url = f"http://127.0.0.1:{port}{path}"
            sweep[batching_label(setting)] = points(url, bodies, None, {SWEEP_CONCURRENCY: SWEEP_SECONDS})[
                str(SWEEP_CONCURRENCY)
            ]
    best = max(settings, key=lambda s: sweep[batching_label(s)]["throughput_rps"])
    port = free_port()
    with http_app(command(port, best), port, work, name, env):
        log(f" {name}, best: {batching_label(best)}")
        load = points(f"http://127.0.0.1:{port}{path}", bodies)
    return {"sweep": sweep, "best": batching_label(best), "load": load}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--raw-duration", type=float, default=6.0, help="seconds per raw batch size")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if not (MODEL_DIR / "config.json").is_file():
        raise SystemExit(f"{MODEL_DIR} is missing: run `make bench`, which builds it")
    from bench.run import machine

    started = time.time()
    _, heldout = split_tweets()
    texts, bodies, work, texts_file, store = workspace("bench-peers-", [t.text for t in heldout])
    variant = shipped_variant()
    graph = raw_model_dir(work, variant)
    raw = raw_limit(texts_file, variant, graph, args)
    per_core = max(r["sentences_per_s"] for r in raw["parallel"]["results"])
    shipped = shipped_model_settings()
    batch, delay, workers = shipped["batchSize"], shipped["maxBatchDelay"], shipped["maxWorkers"]
    threads = shipped_handler_options()["torch_threads"]
    mar = archive(store, "shipped.mar", "1.0", {**VARIANTS[variant], "torch_threads": threads})
    systems = {}
    log(f"this project: TorchServe, {workers} workers x {threads} thread, batch {batch}, {delay} ms")
    with serving(store, work / "ts", {"1.0": mar.name}, batch, delay, workers, bodies) as server:
        header = ("Authorization", ts_headers(server)["Authorization"])
        systems["this project"] = {
            "best": f"{workers} worker(s) x {threads} thread(s), batch {batch}, {delay} ms (config.properties)",
            "load": points(server.url("inference", "/predictions/sentiment"), bodies, header),
        }
    # both peers run the handler's backend code, on PYTHONPATH as litserve_env puts it
    for name, setting_list, command, path in (
        ("LitServe", LITSERVE_SWEEP, litserve_command, "/predict"),
        ("mosec", MOSEC_SWEEP, mosec_command, "/inference"),
    ):
        systems[name] = peer(name, setting_list, partial(command, onnx_dir=graph), path, work, bodies, litserve_env())
    results = {
        "machine": {**machine(), "mosec": importlib.metadata.version("mosec")},
        "settings": {
            "seconds": SECONDS,
            "sweep_concurrency": SWEEP_CONCURRENCY,
            "sweep_seconds": SWEEP_SECONDS,
            "warmup_seconds": WARMUP_SECONDS,
            "texts": f"{len(texts)} held-out tweets, one per request, JSON body",
            "variant": variant,
        },
        "per_core_limit": {"sentences_per_s": per_core, "processes": raw["parallel"]["processes"]},
        "systems": systems,
        "elapsed_s": round(time.time() - started),
    }
    log(f"done in {results['elapsed_s']} s: {write_results(args.out, 'peers.json', results, work)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
