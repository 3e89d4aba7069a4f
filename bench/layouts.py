"""Moderate load: which workers, batch size and batch delay bring the shipped archive
closest to its backend's raw limit at 16 and 64 concurrent clients.

    .venv/bin/python -m bench.layouts [--duration 10] [--warmup 2] [--out bench/results]

The raw limit is measured first, in the same run: one single-threaded process per core
running the handler's backend code in a loop (bench/raw.py, the per-core layout the
service copies), its best batch size. Then, for each setting in SETTINGS, a TorchServe
serving the shipped archive alone (one thread per worker, as shipped) is driven by
closed-loop clients (bench/loadgen.py) at concurrency 16 and 64. Recorded per point:
requests/s and its ratio to the raw limit, p50/p99 and p99/p50, the mean batch and the
cores each process used. The targets (issue 23): at 16 clients at least 0.85 of the raw
limit with p99 no more than twice p50; at 64 clients at least 0.95.

Writes layouts.json to --out; bench/report.py turns it into a table in README.md. The
load generator shares the cores with the server: read ratios from one run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.run import (
    drive,
    machine,
    raw_limit,
    raw_model_dir,
    serving,
    shipped_model_settings,
    shipped_workspace,
    write_results,
)
from common import events
from common.paths import ROOT

CONCURRENCIES = (16, 64)
# (workers, batch size, max batch delay ms): the workers per core and the delay first, at
# the shipped batch size; then smaller batches; then, for what makes the tail at c=16, one
# worker (no second one competing for the cores with the frontend and the clients) and batch
# 8 with a delay long enough for a batch to fill (16 clients in two groups of 8, in turn)
SETTINGS = (
    (2, 16, 0),
    (2, 16, 1),
    (2, 16, 2),
    (3, 16, 0),
    (3, 16, 1),
    (3, 16, 2),
    (4, 16, 0),
    (4, 16, 1),
    (4, 16, 2),
    (2, 8, 1),
    (4, 8, 1),
    (4, 4, 1),
    (1, 16, 1),
    (1, 8, 2),
    (2, 8, 2),
    (2, 8, 3),
)


def log(message: str) -> None:
    events.log("layouts", message)


def label(setting: tuple[int, int, int]) -> str:
    workers, batch, delay = setting
    return f"{workers} workers, batch {batch}, {delay} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per point")
    parser.add_argument("--raw-duration", type=float, default=6.0, help="seconds per raw batch size")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    started = time.time()
    bodies, work, texts_file, store, variant, threads = shipped_workspace("bench-layouts-")
    raw = raw_limit(texts_file, variant, raw_model_dir(work, variant), args)
    per_core = max(raw["parallel"]["results"], key=lambda r: r["sentences_per_s"])
    limit = per_core["sentences_per_s"]
    log(f"raw limit, one single-threaded process per core: {limit:.1f} texts/s (batch {per_core['batch_size']})")

    points = {}
    for n, setting in enumerate(SETTINGS):
        workers, batch, delay = setting
        log(label(setting))
        with serving(store, work / f"ts{n}", {"1.0": "shipped.mar"}, batch, delay, workers, bodies) as server:
            loads = {str(c): drive(server, bodies, c, args) for c in CONCURRENCIES}
        for load in loads.values():
            load["of_raw"] = round(load["throughput_rps"] / limit, 3)
            load["p99_over_p50"] = round(load["p99_ms"] / load["p50_ms"], 2)
        points[label(setting)] = {"workers": workers, "batch_size": batch, "delay_ms": delay, "load": loads}
        log("  " + ", ".join(f"c={c}: {v['of_raw']:.2f} of raw, p99/p50 {v['p99_over_p50']}" for c, v in loads.items()))

    results = {
        "machine": machine(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "raw_duration_s": args.raw_duration,
            "variant": variant,
            "threads_per_worker": threads,
            "shipped": shipped_model_settings(),
            "concurrencies": list(CONCURRENCIES),
        },
        "raw_per_core": {"texts_per_s": limit, "batch_size": per_core["batch_size"], "raw": raw["parallel"]},
        "points": points,
        "elapsed_s": round(time.time() - started),
    }
    log(f"done in {results['elapsed_s']} s: {write_results(args.out, 'layouts.json', results, work)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
