"""The frontend's heap, measured: how much of its bound (config.properties' `vmargs`,
-Xmx) TorchServe's JVM uses, and what load exceeds it.

    .venv/bin/python -m bench.frontend_heap [--seconds 40] [--out bench/results/frontend_heap.json]

Each case starts a real TorchServe with the shipped archive and config.properties, its
`vmargs` included, plus `-Xlog:gc` to a file: every collection's heap before and after it
and the heap's committed size, so the peak is exact rather than sampled. The JVM's
resident memory (RSS) is sampled every second. Closed-loop clients (bench/loadgen.py) send
for --seconds:

1. ordinary: 16 clients, held-out tweets, straight to port 8080;
2. long texts: 256 clients (TorchServe's job queue holds 256), texts of 10,000
   characters (the handler's max_text_chars), straight to port 8080;
3. big bodies through the gateway: 300 clients, each body a text of 1,000,000 characters
   (under max_request_size; the handler answers 413), through the gateway with its shipped
   bound of requests in flight per node (48 when the committed run was made); its per-key and rate limits lifted, as for
   many clients together;
4. the same big bodies straight to port 8080, which only the pod's own processes reach
   (it listens on 127.0.0.1): only job_queue_size bounds what the JVM holds there.

Recorded per case: the answers' statuses (0: no answer, the connection refused or
closed), the heap's peak (before a collection) and its largest committed size, the most
left after a collection, the RSS peak, whether the JVM ran out of heap, and when it
exited if it did (-XX:+ExitOnOutOfMemoryError: seconds from the load's start, to the
second). Writes one JSON file.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench.loadgen import json_bodies, run_load
from bench.run import machine
from common import events
from common.net import free_port
from common.paths import MODEL_STORE, ROOT
from common.torchserve_files import read_properties
from gateway.nginx import Gateway, GatewaySettings, Node
from server.launch import CONFIG
from testbed.local_server import LocalTorchServe
from training.tweets import split_tweets

KEY = "bench-frontend-heap-key-" + "x" * 24
BIG_TEXT_CHARS = 1_000_000
LONG_TEXT_CHARS = 10_000
# "[1.234s][info][gc] GC(7) Pause Young (Normal) (G1 Evacuation Pause) 45M->12M(84M) 3.456ms"
GC_LINE = re.compile(r"GC\(\d+\) .*?(\d+)M->(\d+)M\((\d+)M\)")


def log(message: str) -> None:
    events.log("frontend-heap", message)


def gc_peaks(gc_log: Path) -> dict:
    """The heap's peak in use (before a collection), the most left after one (what was live,
    garbage the collection could not free included) and the largest committed size, in MiB,
    from the JVM's -Xlog:gc lines; their count too."""
    before, after, committed = [], [], []
    for line in gc_log.read_text(errors="replace").splitlines():
        m = GC_LINE.search(line)
        if m:
            before.append(int(m[1]))
            after.append(int(m[2]))
            committed.append(int(m[3]))
    return {
        "collections": len(before),
        "heap_peak_mib": max(before, default=0),
        "heap_after_gc_max_mib": max(after, default=0),
        "heap_committed_max_mib": max(committed, default=0),
    }


def run_case(
    name: str, texts: list[str], clients: int, through_gateway: bool, vmargs: str, args, workdir: Path
) -> dict:
    slug = re.sub(r"\W+", "-", name)
    gc_log = workdir / f"{slug}-gc.log"
    server = LocalTorchServe(
        model_store=MODEL_STORE,
        workdir=workdir / slug,
        overrides={"vmargs": f"{vmargs} -Xlog:gc:file={gc_log}"},
    ).start()
    gateway = None
    try:
        jvm = server.frontend()
        way_in = "port 8080"
        url, key = server.url("inference", "/predictions/sentiment"), server.keys["inference"]
        if through_gateway:
            settings = GatewaySettings(
                free_port(),
                {"bench": KEY},
                rate_per_s=100_000,
                burst=100_000,
                conn_per_key=4096,
                conn_per_address=4096,
                key_share_of_node=1.0,  # one key standing for many clients: the node's whole, less one
            )
            gateway = Gateway(workdir / f"{slug}-gateway", settings).start([Node.from_dir(workdir / slug)])
            url, key = f"http://127.0.0.1:{settings.port}/predictions/sentiment", KEY
            way_in = f"gateway ({settings.in_flight_per_node} in flight per node)"
        rss: list[float] = []
        exited_after: list[float] = []
        done = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not done.wait(1.0):
                try:
                    if jvm.status() == psutil.STATUS_ZOMBIE:
                        raise psutil.NoSuchProcess(jvm.pid)
                    rss.append(jvm.memory_info().rss / 2**20)
                except psutil.NoSuchProcess:
                    exited_after.append(round(time.monotonic() - started, 1))
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        log(f"{name}: {clients} clients for {args.seconds:.0f} s")
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        load = run_load(url, json_bodies(texts), headers, clients, duration=args.seconds, warmup=2.0)
        done.set()
        sampler.join()
        result = {
            "case": name,
            "clients": clients,
            "way_in": way_in,
            "text_chars": max(len(t) for t in texts),
            "statuses": load.status_counts,
            "jvm_exited_after_s": exited_after[0] if exited_after else None,
            "rss_peak_mib": round(max(rss, default=0.0), 1),
            **gc_peaks(gc_log),
        }
        output = (server.workdir / "torchserve.out").read_text(errors="replace")
        result["out_of_memory"] = "java.lang.OutOfMemoryError" in output
        log(json.dumps(result))
        return result
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="each case's load")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "frontend_heap.json")
    args = parser.parse_args(argv)
    tweets = [t.text for t in split_tweets()[1]]
    big, long = ["w" * BIG_TEXT_CHARS], ["word " * (LONG_TEXT_CHARS // 5)]
    config = read_properties(CONFIG)
    result = {
        "machine": machine(),
        "vmargs": config["vmargs"],
        "job_queue_size": int(config["job_queue_size"]),
        "seconds": args.seconds,
        "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="frontend-heap-") as tmp:
        for name, texts, clients, through_gateway in (
            ("ordinary", tweets, 16, False),
            ("long texts", long, 256, False),
            ("big bodies, gateway", big, 300, True),
            ("big bodies, port 8080", big, 300, False),
        ):
            result["cases"].append(run_case(name, texts, clients, through_gateway, config["vmargs"], args, Path(tmp)))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
