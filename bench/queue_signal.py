"""The HPA's queue signal against load, measured: where to put its target.

    .venv/bin/python -m bench.queue_signal [--steps 1,2,4,...] [--duration 15] [--out bench/results]

Starts a real TorchServe with the shipped archive (model_store/sentiment.mar) and the
repo's config.properties (the same workers, batching and queue as the Kubernetes
ConfigMap), and a private Prometheus scraping its metrics port every second with the
repo's recording rules. Then drives it with closed-loop clients (bench/loadgen.py,
held-out tweets, loopback only) at a sequence of concurrencies, up to and past
saturation, and records at each step:

  - throughput (2xx/s) and client latency (p50/p90/p99) from the load generator;
  - the queue signal the HPA scales on (monitoring/prometheus-adapter-rules.yaml:
    rate(ts_queue_latency_microseconds) / 1e6, requests waiting in the job queue on
    average), over the step's measured window rather than the adapter's 1 minute, so each
    step's value is its own steady state and the run stays short;
  - TorchServe's own mean latency (rate(ts_inference_latency_microseconds) /
    rate(ts_inference_requests_total), the latency SLO's SLI), to set beside the client's
    percentiles, and the mean batch size.

Writes queue_signal.json and queue_signal.png to --out; the suggested target is the
signal where throughput reaches --fraction (0.75) of the saturation throughput (the best
step), interpolated between the two steps around it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import requests

from bench.loadgen import json_bodies, run_load
from common import events
from common.paths import CONFIG, MODEL_STORE, ROOT
from common.torchserve_files import read_properties
from testbed.local_server import LocalTorchServe
from testbed.prometheus import LocalPrometheus
from training.tweets import split_tweets

STEPS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
SIGNAL = "sum(increase(ts_queue_latency_microseconds[{w}s])) / {w} / 1e6"
TS_MEAN_LATENCY_MS = (
    "sum(increase(ts_inference_latency_microseconds[{w}s])) / sum(increase(ts_inference_requests_total[{w}s])) / 1e3"
)
MEAN_BATCH = "sum(increase(SentimentBatchSize_sum[{w}s])) / sum(increase(SentimentBatchSize_count[{w}s]))"


def log(message: str) -> None:
    events.log("queue_signal", message)


def query_at(prom: LocalPrometheus, expr: str, at: float) -> float:
    url = prom.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    answer = requests.get(url, timeout=10).json()
    if answer.get("status") != "success":
        raise ValueError(f"query {expr!r} failed: {answer.get('error')}")
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else float("nan")


def suggest_target(steps: list[dict], fraction: float) -> dict:
    """The signal where throughput first reaches `fraction` of the best step's, linearly
    interpolated between the steps below and above that throughput."""
    saturation = max(s["throughput_rps"] for s in steps)
    goal = fraction * saturation
    for below, above in itertools.pairwise(steps):
        if below["throughput_rps"] < goal <= above["throughput_rps"]:
            share = (goal - below["throughput_rps"]) / (above["throughput_rps"] - below["throughput_rps"])
            signal = below["queued_requests"] + share * (above["queued_requests"] - below["queued_requests"])
            return {
                "fraction": fraction,
                "saturation_rps": saturation,
                "throughput_rps": goal,
                "queued_requests": signal,
                "between_concurrency": [below["concurrency"], above["concurrency"]],
            }
    first = steps[0]
    return {
        "fraction": fraction,
        "saturation_rps": saturation,
        "throughput_rps": first["throughput_rps"],
        "queued_requests": first["queued_requests"],
        "between_concurrency": [first["concurrency"]] * 2,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["steps"]
    c = [s["concurrency"] for s in steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.plot(c, [s["throughput_rps"] for s in steps], "o-", color="tab:blue", label="throughput (2xx/s)")
    left.set_xscale("log", base=2)
    left.set_xlabel("closed-loop clients")
    left.set_ylabel("requests/s", color="tab:blue")
    twin = left.twinx()
    twin.plot(c, [s["queued_requests"] for s in steps], "s-", color="tab:red", label="queued requests (HPA signal)")
    twin.plot(c, [s["p99_ms"] / 100 for s in steps], "^:", color="tab:gray", label="client p99 (100 ms)")
    twin.set_ylabel("queued requests / p99 in 100 ms", color="tab:red")
    left.set_title("One pod (2 workers, batch 16) against load")
    lines = left.get_lines() + twin.get_lines()
    left.legend(lines, [line.get_label() for line in lines], loc="upper left", fontsize=8)

    target = result["suggested_target"]
    right.plot([s["throughput_rps"] for s in steps], [s["queued_requests"] for s in steps], "s-", color="tab:red")
    for s in steps:
        right.annotate(
            f"c={s['concurrency']}",
            (s["throughput_rps"], s["queued_requests"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(3, 3),
        )
    right.axvline(target["saturation_rps"], color="tab:blue", ls=":", label="saturation (best step)")
    right.axvline(target["throughput_rps"], color="tab:green", ls="--", label=f"{target['fraction']:.0%} of saturation")
    right.axhline(
        target["queued_requests"], color="tab:green", ls="-.", label=f"signal there: {target['queued_requests']:.2f}"
    )
    right.set_xlabel("throughput (2xx/s)")
    right.set_ylabel("queued requests (HPA signal)")
    right.set_yscale("symlog", linthresh=1)
    right.set_title("Queue signal against throughput")
    right.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default=",".join(map(str, STEPS)), help="concurrencies, in order")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds per step before measuring")
    parser.add_argument("--fraction", type=float, default=0.75, help="share of saturation for the target")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--store",
        type=Path,
        default=MODEL_STORE,
        help="model store holding sentiment.mar (default: the shipped one, model_store/)",
    )
    parser.add_argument(
        "--archive-note", default="model_store/sentiment.mar", help="what the archive is, for the results"
    )
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.steps.split(",")]
    archive = args.store / "sentiment.mar"
    if not archive.is_file():
        parser.error(f"{archive} is missing: `make archive` builds it")

    _, heldout = split_tweets()
    bodies = json_bodies([t.text for t in heldout])
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="queue-signal-"))
    steps = []
    with LocalTorchServe(model_store=args.store, workdir=work / "ts") as server:
        with LocalPrometheus(work / "prometheus", {"local": server.ports["metrics"]}) as prom:
            url = server.url("inference", "/predictions/sentiment")
            headers = {"Authorization": f"Bearer {server.keys['inference']}", "Content-Type": "application/json"}
            log("TorchServe up; warming it (c=4, 5 s)")
            run_load(url, bodies, headers, 4, duration=5, warmup=0)
            time.sleep(3)
            idle_at = time.time()
            idle = query_at(prom, SIGNAL.format(w=2), idle_at)
            for c in concurrencies:
                window_start = time.time() + args.warmup
                load = run_load(url, bodies, headers, c, duration=args.duration, warmup=args.warmup)
                window_end = window_start + args.duration
                time.sleep(2.5)  # the last scrapes of the window land
                w = int(args.duration)
                step = {
                    **{k: v for k, v in load.as_dict().items() if k != "seconds"},
                    "queued_requests": query_at(prom, SIGNAL.format(w=w), window_end),
                    "torchserve_mean_latency_ms": query_at(prom, TS_MEAN_LATENCY_MS.format(w=w), window_end),
                    "mean_batch": query_at(prom, MEAN_BATCH.format(w=w), window_end),
                }
                steps.append(step)
                log(
                    f"c={c:3d}: {step['throughput_rps']:6.1f} 2xx/s, p50 {step['p50_ms']:6.1f} ms, "
                    f"p99 {step['p99_ms']:6.1f} ms, queued {step['queued_requests']:6.2f}, "
                    f"mean batch {step['mean_batch']:4.1f}, errors {step['errors']}"
                )
            time.sleep(65)
            after = query_at(prom, "sentiment:queued_requests:rate1m", time.time())
    properties = read_properties(CONFIG)
    served = json.loads(properties["models"])["sentiment"]["1.0"]
    result = {
        "what": "one TorchServe pod's queue signal (sentiment_queued_requests, the HPA's Pods metric) against "
        "closed-loop load; queued_requests is rate(ts_queue_latency_microseconds)/1e6 over each "
        "step's measured window",
        "machine": {
            "cores": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "note": f"{len(os.sched_getaffinity(0))} cores shared with the load generator",
        },
        "server": f"{args.archive_note} with config.properties: {served['maxWorkers']} workers, batchSize "
        f"{served['batchSize']}, maxBatchDelay {served['maxBatchDelay']} ms, job_queue_size "
        f"{properties['job_queue_size']} (the Kubernetes ConfigMap's settings)",
        "load": {
            "kind": "closed loop",
            "texts": "held-out tweets, one per request, JSON body",
            "warmup_s": args.warmup,
            "measured_s": args.duration,
            "prometheus_scrape": "1s",
        },
        "idle_queued_requests": idle,
        "queued_requests_65s_after_rate1m": after,
        "steps": steps,
        "suggested_target": suggest_target(steps, args.fraction),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "queue_signal.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "queue_signal.png")
    target = result["suggested_target"]
    log(
        f"saturation {target['saturation_rps']:.1f} 2xx/s; at {target['fraction']:.0%} of it "
        f"({target['throughput_rps']:.1f}/s) the signal is {target['queued_requests']:.2f}; "
        f"wrote {args.out / 'queue_signal.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
