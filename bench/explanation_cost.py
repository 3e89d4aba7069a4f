"""What an explanation costs, and what it costs the predictions around it.

    .venv/bin/python -m bench.explanation_cost [--seconds 12] [--out bench/results]

Starts a real TorchServe with the shipped archive (model_store/sentiment.mar, the repo's
config.properties) and the gateway in front of it (one client key, rate limit lifted; the
gateway's one-explanation-at-a-time limit as shipped). Predictions of held-out tweets at
concurrency 4 for --seconds, alone, then beside one client asking for explanations of a
10-word sentence (50 steps) back to back. Before the phases, on the fresh server, the
first WARM_EXPLANATIONS explanations, one after another, are timed apart
(`first_explanations_ms`: each worker's first ones), with predictions at concurrency 4
beside them from the start (`predictions_beside_first_explanations`, with the slowest:
a worker that loaded its explainer inside a batch held up the predictions of that batch,
and any answer not a 200 is counted there, not raised). Writes explanation_cost.json to
--out: one explanation's median time, any explanation that was not answered 200, and the
predictions' p50 and p99 in each phase, with the machine. docs/explanations.md reads its
figures from there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.gateway_process import gateway_process
from bench.loadgen import percentile
from bench.run import machine
from common import events
from common.net import free_port
from common.paths import MODEL_STORE, ROOT
from gateway.nginx import Gateway, GatewaySettings, Node
from testbed.local_server import LocalTorchServe
from training.tweets import split_tweets

SENTENCE = "the food was great but the service was awful"
KEY = "bench-explanations-key-31415"
WARM_EXPLANATIONS = 6
AUTH = {"Authorization": f"Bearer {KEY}"}


def predictions(
    url: str,
    texts: list[str],
    seconds: float,
    clients: int = 4,
    until: threading.Event | None = None,
    refused: Counter[str] | None = None,
) -> list[float]:
    """Closed-loop predictions for `seconds` (or until `until` is set): each 200's latency
    in ms; any other answer raises, or is counted by status in `refused` when given."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def client(n: int) -> None:
        session, i = requests.Session(), n
        while time.monotonic() < stop and not (until is not None and until.is_set()):
            started = time.monotonic()
            answer = session.post(url, json={"text": texts[i % len(texts)]}, headers=AUTH, timeout=60)
            if answer.status_code != 200 and refused is not None:
                refused[str(answer.status_code)] += 1
                i += clients
                continue
            if answer.status_code != 200:
                raise RuntimeError(f"a prediction got {answer.status_code}: {answer.text[:200]}")
            latencies.append((time.monotonic() - started) * 1000)
            i += clients

    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(client, range(clients)))
    return latencies


def measure(gateway: Gateway, seconds: float) -> dict:
    texts = [t.text for t in split_tweets()[1][:300]]
    predict_url, explain_url = gateway.url("/predictions/sentiment"), gateway.url("/explanations/sentiment")
    session = requests.Session()
    refused: Counter[str] = Counter()

    def explain() -> float | None:
        """One explanation's time in ms; None (counted by status) when it was not a 200."""
        started = time.monotonic()
        answer = session.post(explain_url, json={"text": SENTENCE}, headers=AUTH, timeout=120)
        if answer.status_code != 200:
            refused[str(answer.status_code)] += 1
            return None
        return (time.monotonic() - started) * 1000

    # the first explanations of the fresh server's workers, beside predictions at
    # concurrency 4 from the start (issue 28: a worker loaded its explainer inside the
    # batch of its first explanation, and the predictions batched with it waited)
    first_done = threading.Event()
    cold: list[float] = []
    cold_refused: Counter[str] = Counter()
    cold_thread = threading.Thread(
        target=lambda: cold.extend(predictions(predict_url, texts, 600, until=first_done, refused=cold_refused))
    )
    cold_thread.start()
    try:
        first = [explain() for _ in range(WARM_EXPLANATIONS)]
    finally:
        first_done.set()
        cold_thread.join(timeout=120)
    predictions(predict_url, texts, 3)  # warm-up
    alone = predictions(predict_url, texts, seconds)
    explained: list[float] = []
    stop = threading.Event()

    def explainer() -> None:
        while not stop.is_set():
            ms = explain()
            if ms is not None:
                explained.append(ms)

    thread = threading.Thread(target=explainer)
    thread.start()
    try:
        beside = predictions(predict_url, texts, seconds)
    finally:
        stop.set()
        thread.join(timeout=120)
    return {
        "first_explanations_ms": [None if ms is None else round(ms, 1) for ms in first],
        "explanation_ms_median": round(statistics.median(explained), 1),
        "explanations": len(explained),
        "explanations_not_200": dict(refused),
        "predictions_beside_first_explanations": {
            "count": len(cold),
            "p50_ms": round(percentile(sorted(cold), 50), 1),
            "p99_ms": round(percentile(sorted(cold), 99), 1),
            "max_ms": round(max(cold), 1),
            "not_200": dict(cold_refused),
        },
        "predictions_alone": {
            "count": len(alone),
            "p50_ms": round(percentile(sorted(alone), 50), 1),
            "p99_ms": round(percentile(sorted(alone), 99), 1),
        },
        "predictions_beside_explanations": {
            "count": len(beside),
            "p50_ms": round(percentile(sorted(beside), 50), 1),
            "p99_ms": round(percentile(sorted(beside), 99), 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="each phase's measured window")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="explanation-cost-") as tmp:
        workdir = Path(tmp) / "ts"
        server = LocalTorchServe(model_store=MODEL_STORE, workdir=workdir)
        server.start()
        try:
            settings = GatewaySettings(free_port(), {"bench": KEY}, rate_per_s=1000, burst=1000)
            gateway = Gateway(Path(tmp) / "gateway", settings)
            with gateway_process(gateway, [Node.from_dir(workdir)]):
                events.log("explanation_cost", f"measuring, {args.seconds:.0f} s a phase")
                result = measure(gateway, args.seconds)
        finally:
            server.stop()
    result = {
        "what": "predictions at concurrency 4 through the gateway, alone and beside one client explaining "
        f'"{SENTENCE}" (50 steps) back to back; the shipped archive and config.properties',
        "seconds_per_phase": args.seconds,
        "machine": machine(),
        **result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explanation_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
