"""The tail at 16 clients: what the slowest requests spend their time on.

    .venv/bin/python -m bench.tail [--duration 20] [--warmup 3] [--out bench/results]

For the shipped setting and the two that bound its tail in bench/layouts.py (one worker;
two workers at batch 8 / 3 ms), a TorchServe serving the shipped archive alone is driven by
16 closed-loop clients (bench/loadgen.py), with TorchServe's metrics logged instead of
served (metrics_mode=log, and a log4j2 config that writes them to a file). Per request the
frontend logs its whole latency and its queue wait (arrival to a worker taking it in a
batch), on adjacent lines: the rest of the latency is its service (the batch's run in the
worker, and the trips to it and back). Per batch the worker logs its size and its time
(PredictionTime) under the batch's request IDs. Recorded per setting: the clients' p50/p99;
per request the latency, queue wait and service p50/p99, and for the slowest 1% and for
the middle (45th to 55th percentile) the mean queue wait and service; per batch the sizes
seen, the time p50/p99, and the time p50/p99 of the batches of the commonest size (one
size: what varies is the CPU the batch got, and its texts).

Logging a few lines per request costs the frontend some CPU: the shipped setting is also
run with its metrics served as shipped, and the two throughputs are recorded side by side.
Writes tail.json to --out.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from bench.loadgen import percentile, run_load
from bench.run import (
    machine,
    serving,
    shipped_model_settings,
    shipped_workspace,
    ts_headers,
    write_results,
)
from common import events
from common.paths import LOG_CONFIG, ROOT

CONCURRENCY = 16
# (workers, batch size, max batch delay ms): as shipped, one worker, two at batch 8 / 3 ms
SETTINGS = ((2, 16, 1), (1, 16, 1), (2, 8, 3))
METRICS_FILE = "metrics.log"
# a metric line in log mode: NAME.UNIT:VALUE|#dimensions|#hostname:...,requestID:IDS,timestamp:...
METRIC_LINE = re.compile(r"^(\w+)\.\w+:([0-9.eE+-]+)\|#")
BATCH_IDS = re.compile(r"requestID:([0-9a-f,-]+),timestamp:")


def log(message: str) -> None:
    events.log("tail", message)


def metrics_logging_config(work: Path) -> Path:
    """The shipped log4j2.xml with TorchServe's two metric loggers (off as shipped: the
    metrics port serves them) writing to METRICS_FILE in the log directory."""
    text = LOG_CONFIG.read_text()
    appender = (
        f'\t\t<File name="metrics_file" fileName="${{dir}}/{METRICS_FILE}"><PatternLayout pattern="%m%n"/></File>\n'
    )
    text = text.replace("\t</Appenders>", appender + "\t</Appenders>", 1)
    for name in ("MODEL_METRICS", "TS_METRICS"):
        off = f'<Logger name="{name}" level="off" additivity="false"/>'
        on = f'<Logger name="{name}" level="info" additivity="false"><AppenderRef ref="metrics_file"/></Logger>'
        if off not in text:
            raise SystemExit(f"log4j2.xml no longer turns {name} off: bench/tail.py cannot turn it on")
        text = text.replace(off, on)
    path = work / "log4j2-metrics.xml"
    path.write_text(text)
    return path


def parse_metrics(text: str) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(latency ms, queue wait ms) per request, from the frontend's adjacent lines of one
    request (a pair split by another thread's line is left out), and (size, time ms) per
    batch, from the worker's lines that carry the batch's request IDs."""
    requests: list[tuple[float, float]] = []
    batches: dict[str, dict[str, float]] = {}
    latency = None
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if not match:
            latency = None
            continue
        name, value = match[1], float(match[2])
        if name == "ts_queue_latency_microseconds" and latency is not None:
            requests.append((latency / 1000, value / 1000))
        latency = value if name == "ts_inference_latency_microseconds" else None
        if name in ("SentimentBatchSize", "PredictionTime"):
            ids = BATCH_IDS.search(line)
            if ids:
                batches.setdefault(ids[1], {})[name] = value
    sized = [(b["SentimentBatchSize"], b["PredictionTime"]) for b in batches.values() if len(b) == 2]
    return requests, sized


def quantiles(values: list[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    return {"n": len(ordered), "p50": round(percentile(ordered, 50), 1), "p99": round(percentile(ordered, 99), 1)}


def band(requests: list[tuple[float, float]], low: float, high: float) -> dict[str, float]:
    """Mean queue wait and service of the requests between two percentiles of latency."""
    ordered = sorted(requests)
    chosen = ordered[int(len(ordered) * low) : max(int(len(ordered) * high), int(len(ordered) * low) + 1)]
    return {
        "requests": len(chosen),
        "latency_ms": round(sum(r[0] for r in chosen) / len(chosen), 1),
        "queue_wait_ms": round(sum(r[1] for r in chosen) / len(chosen), 1),
        "service_ms": round(sum(r[0] - r[1] for r in chosen) / len(chosen), 1),
    }


def analysed(load: dict, requests: list[tuple[float, float]], batches: list[tuple[float, float]]) -> dict:
    sizes = [int(size) for size, _ in batches]
    commonest = max(set(sizes), key=sizes.count)
    return {
        "clients": {k: round(load[k], 2) for k in ("throughput_rps", "p50_ms", "p99_ms")},
        "latency_ms": quantiles([r[0] for r in requests]),
        "queue_wait_ms": quantiles([r[1] for r in requests]),
        "service_ms": quantiles([r[0] - r[1] for r in requests]),
        "slowest_1pct": band(requests, 0.99, 1.0),
        "middle": band(requests, 0.45, 0.55),
        "batch_sizes": {str(s): sizes.count(s) for s in sorted(set(sizes))},
        "mean_batch_size": round(sum(sizes) / len(sizes), 2),
        "batch_time_ms": quantiles([t for _, t in batches]),
        "commonest_size": commonest,
        "commonest_size_time_ms": quantiles([t for size, t in batches if size == commonest]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per setting")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per setting")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    started = time.time()
    bodies, work, _, store, variant, threads = shipped_workspace("bench-tail-")
    log_config = metrics_logging_config(work)

    points = {}
    for n, (workers, batch, delay) in enumerate(SETTINGS):
        name = f"{workers} workers, batch {batch}, {delay} ms"
        log(name)
        extra = {"metrics_mode": "log"}
        with serving(
            store, work / f"ts{n}", {"1.0": "shipped.mar"}, batch, delay, workers, bodies, extra, log_config
        ) as server:
            url, headers = server.url("inference", "/predictions/sentiment"), ts_headers(server)
            run_load(url, bodies, headers, CONCURRENCY, duration=args.warmup, warmup=0.0)
            metrics = server.log_dir / METRICS_FILE
            time.sleep(1.0)  # the warm-up's lines written (log4j2's async loggers)
            start = metrics.stat().st_size
            load = run_load(url, bodies, headers, CONCURRENCY, duration=args.duration, warmup=0.0).as_dict()
            time.sleep(2.0)
            with open(metrics, "rb") as f:
                f.seek(start)
                requests, batches = parse_metrics(f.read().decode(errors="replace"))
        point = {"workers": workers, "batch_size": batch, "delay_ms": delay, **analysed(load, requests, batches)}
        points[name] = point
        slow, middle = point["slowest_1pct"], point["middle"]
        log(
            f"  clients {load['throughput_rps']:.0f} req/s p50 {load['p50_ms']:.1f} p99 {load['p99_ms']:.1f} ms; "
            f"slowest 1%: queue {slow['queue_wait_ms']} + service {slow['service_ms']} ms, middle: queue "
            f"{middle['queue_wait_ms']} + service {middle['service_ms']} ms; mean batch {point['mean_batch_size']}"
        )
    workers, batch, delay = SETTINGS[0]
    log("the shipped setting, its metrics served as shipped (not logged)")
    with serving(store, work / "unlogged", {"1.0": "shipped.mar"}, batch, delay, workers, bodies) as server:
        url, headers = server.url("inference", "/predictions/sentiment"), ts_headers(server)
        unlogged = run_load(url, bodies, headers, CONCURRENCY, args.duration, args.warmup).as_dict()
    log(
        f"  clients {unlogged['throughput_rps']:.0f} req/s p50 {unlogged['p50_ms']:.1f} p99 {unlogged['p99_ms']:.1f} ms"
    )

    results = {
        "machine": machine(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": CONCURRENCY,
            "variant": variant,
            "threads_per_worker": threads,
            "shipped": shipped_model_settings(),
        },
        "points": points,
        "shipped_unlogged": {k: round(unlogged[k], 2) for k in ("throughput_rps", "p50_ms", "p99_ms")},
        "elapsed_s": round(time.time() - started),
    }
    log(f"done in {results['elapsed_s']} s: {write_results(args.out, 'tail.json', results, work)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
