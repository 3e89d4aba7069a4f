"""Soak: TorchServe as shipped under steady load for minutes; worker memory before/after.

    python -m bench.soak [--minutes 3] [--concurrency 16]   (also the last phase of make bench)

One request in ten is malformed ({"text": ""}) so that the error path soaks too: those
must get 400, the others 200; anything else counts as an error. Worker resident memory
is read after a warm-up (so that first-batch allocations are not counted as growth)
and again after the soak, and sampled every 30 s in between.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.loadgen import json_bodies, run_load
from common.paths import MODEL_STORE
from testbed.local_server import LocalTorchServe
from training.tweets import split_tweets

GROWTH_LIMIT = 0.10
SAMPLE_EVERY_S = 30.0


def workers_rss_mib(server: LocalTorchServe, model: str = "sentiment") -> dict[str, float]:
    """{worker pid: resident MiB} of a model ("sentiment") or one version ("sentiment/2.0")."""
    return {str(pid): psutil.Process(pid).memory_info().rss / 2**20 for pid in server.client.worker_pids(model)}


def soak(store: Path, minutes: float, concurrency: int, workdir: Path, log=print) -> dict:
    _, heldout = split_tweets()
    bodies = json_bodies([t.text for t in heldout])
    bad = json.dumps({"text": ""}).encode()
    bodies = [bad if i % 10 == 9 else b for i, b in enumerate(bodies)]
    server = LocalTorchServe(model_store=store, workdir=workdir)
    with server:
        url = server.url("inference", "/predictions/sentiment")
        headers = {"Authorization": f"Bearer {server.keys['inference']}", "Content-Type": "application/json"}
        log(f"soak: warm-up 30 s at concurrency {concurrency}")
        run_load(url, bodies, headers, concurrency, duration=30.0, warmup=0.0)
        pids_before = server.client.worker_pids("sentiment")
        before = workers_rss_mib(server)
        samples, statuses, seconds = [], {}, 0.0
        deadline = time.time() + minutes * 60
        while time.time() < deadline:
            step = min(SAMPLE_EVERY_S, deadline - time.time())
            result = run_load(url, bodies, headers, concurrency, duration=step, warmup=0.0)
            for status, n in result.status_counts.items():
                statuses[status] = statuses.get(status, 0) + n
            seconds += step
            samples.append({"t_s": round(seconds), "rss_mib": workers_rss_mib(server)})
            log(
                f"soak: {seconds:5.0f} s  {result.throughput_rps:6.1f} req/s  rss "
                + ", ".join(f"{v:.0f}" for v in samples[-1]["rss_mib"].values())
                + " MiB"
            )
        after = workers_rss_mib(server)
        restarted = sorted(set(pids_before) ^ set(server.client.worker_pids("sentiment")))

    total_before, total_after = sum(before.values()), sum(after.values())
    expected = statuses.get("200", 0) + statuses.get("400", 0)
    requests = sum(statuses.values())
    return {
        "minutes": minutes,
        "concurrency": concurrency,
        "requests": requests,
        "requests_per_s": round(requests / seconds, 1) if seconds else None,
        "status_counts": statuses,
        "errors": requests - expected,  # neither a prediction nor the expected 400
        "worker_restarts": len(restarted) // 2,
        "rss_before_mib": before,
        "rss_after_mib": after,
        "rss_growth": round(total_after / total_before - 1, 4),
        "growth_limit": GROWTH_LIMIT,
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--store", type=Path, default=MODEL_STORE)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as work:
        result = soak(
            args.store,
            args.minutes,
            args.concurrency,
            Path(work),
            log=lambda message: print(message, file=sys.stderr, flush=True),
        )
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    ok = result["errors"] == 0 and result["rss_growth"] < GROWTH_LIMIT
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
