"""Overload, measured: goodput and latency with arrivals past what the service can do.

    .venv/bin/python -m bench.overload [--seconds 60] [--multiples 1.5,3] [--keys 1,4,16] [--no-direct]
                                       [--in-flight-per-node N] [--out bench/results]

Starts a real TorchServe with the shipped archive and config.properties (its workers,
batching and job queue) and the gateway in front of it (its shipped limits, but for the
request rate per key, lifted, as for heavy clients the operator let in). On a machine of
two cores or more the servers (TorchServe, its workers, nginx) run on CPU 0 and the load
generator on CPU 1 (sched_setaffinity, inherited by every process the servers start), so
that the generator neither slows the servers nor is slowed by them; the capacity is taken
in the same arrangement. The gateway runs in a process of its own, as in production
(bench/gateway_process.py: its threads off the generator's GIL). Then:

1. capacity: closed-loop clients at concurrency 16 straight to port 8080 for 15 s
   (bench/loadgen.py): its throughput is the capacity, 4x its p50 the deadline an answer
   must meet to count as goodput;
2. for each way in (straight to port 8080; through the gateway with 1, 4 and 16 client
   keys, their requests interleaved evenly) and each multiple of the capacity: open-loop arrivals
   (bench/openloop.py, a new connection per request) at that rate for --seconds, then at
   half the capacity for 6 s, started on schedule while the overload's last answers are
   still coming. Recorded: the statuses, goodput (in all and per key), p50/p99 of the 2xx
   answers, the refusals' (429/503) p50/p99 and whether each carried Retry-After, how late
   the generator was (p99 over 10 ms: the run cannot tell), the seconds after the
   overload until the 2xx p50 over half-second windows is back within 1.5x the unloaded
   one, and whether any worker restarted.
   Through the gateway, also the refusals' p50/p99 as nginx timed them ($request_time in
   its access log): the server's own time, without the generator's, which at 3x shares
   the cores with the server and starts and reads requests late.

The handler's queue budget (`queue_budget_ms`, model-config.yaml) sheds what waited too
long through the gateway; straight to port 8080 there is no stamp to count from, so that
row shows TorchServe alone. Writes overload.json and overload.png to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import psutil

from bench.gateway_process import gateway_process
from bench.loadgen import json_bodies, percentile, run_load
from bench.openloop import recovery, run_open_loop
from bench.run import machine
from common import events
from common.net import free_port
from common.paths import MODEL_STORE, ROOT
from gateway.nginx import Gateway, GatewaySettings, Node
from testbed.local_server import LocalTorchServe
from training.tweets import split_tweets

KEYS = {f"client{i}": f"bench-overload-key-{i}-{'x' * 24}" for i in range(16)}
SERVER_CPU, GENERATOR_CPU = 0, 1
RECOVERY_SECONDS = 6.0


def log(message: str) -> None:
    events.log("overload", message)


def gateway_refusal_ms(log_file: Path, offset: int) -> list[float]:
    """How long the gateway itself took over each refusal (429/503) it logged past `offset`
    bytes of its access log: nginx's $request_time, from the request's first byte read to
    the answer's last byte written (millisecond resolution), with none of the load
    generator's own delays in it."""
    with open(log_file, "rb") as f:
        f.seek(offset)
        lines = f.read().decode("utf-8", "replace").splitlines()
    times = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # an error-log line
        if isinstance(entry, dict) and entry.get("status") in (429, 503):
            times.append(float(entry["seconds"]) * 1000)
    return sorted(times)


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process and its descendants so far."""
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def overloads(
    server: LocalTorchServe,
    url: str,
    headers: list[dict],
    bodies: list[bytes],
    args,
    capacity,
    trees: dict[str, int],
    gateway_log: Path | None = None,
) -> list:
    """One way in: each multiple of the capacity for args.seconds, then half the capacity;
    with the cores each of `trees` ({name: pid}, a process and its descendants) used."""
    runs = []
    rate = capacity.throughput_rps
    for multiple in args.multiples:
        before = sorted(server.client.worker_pids("sentiment"))
        offset = gateway_log.stat().st_size if gateway_log is not None else 0
        cpu_before, started = {name: cpu_seconds(pid) for name, pid in trees.items()}, time.monotonic()
        log(f"{url}, {len(headers)} key(s): {multiple} x capacity ({multiple * rate:.0f}/s) for {args.seconds:.0f} s")
        phases = [(multiple * rate, args.seconds), (0.5 * rate, RECOVERY_SECONDS)]
        (over, _), (_, after) = run_open_loop(url, bodies, headers, phases, 4 * capacity.p50_ms)
        run = {"multiple": multiple, **over.as_dict()}
        wall = time.monotonic() - started
        run["cores_used"] = {
            name: round((cpu_seconds(pid) - cpu_before[name]) / wall, 3) for name, pid in trees.items()
        }
        run["recovery_s"] = recovery(after, capacity.p50_ms)
        run["worker_restarts"] = sorted(server.client.worker_pids("sentiment")) != before
        if gateway_log is not None:
            time.sleep(1)  # nginx writes its log lines as the answers go out
            own = gateway_refusal_ms(gateway_log, offset)
            run["gateway_refusals"] = len(own)
            run["gateway_refusal_p50_ms"] = percentile(own, 50)
            run["gateway_refusal_p99_ms"] = percentile(own, 99)
        runs.append(run)
        log(json.dumps(run))
    return runs


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (good, tail) = plt.subplots(1, 2, figsize=(11, 4.2))
    capacity = result["capacity"]["throughput_rps"]
    for way, runs in result["runs"].items():
        offered = [r["offered_rps"] for r in runs]
        good.plot(offered, [r["goodput_rps"] for r in runs], marker="o", label=way)
        tail.plot(offered, [r["ok_p99_ms"] for r in runs], marker="o", label=way)
    good.axhline(capacity, color="grey", linestyle="--", linewidth=1, label="capacity (closed loop, c=16)")
    good.axhline(0.9 * capacity, color="grey", linestyle=":", linewidth=1, label="0.9 x capacity")
    tail.axhline(result["deadline_ms"], color="grey", linestyle="--", linewidth=1, label="deadline (4 x p50 at c=16)")
    good.set(xlabel="offered requests/s (open loop)", ylabel="answers within the deadline /s", title="goodput")
    tail.set(xlabel="offered requests/s (open loop)", ylabel="ms", title="p99 of the 2xx answers", yscale="log")
    for ax in (good, tail):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Overload on {result['machine']['usable_cores']} cores: {result['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="each overload's length")
    parser.add_argument("--multiples", default="1.5,3", help="offered load as multiples of the capacity")
    parser.add_argument("--keys", default="1,4,16", help="client keys sharing the load through the gateway")
    parser.add_argument(
        "--in-flight-per-node",
        type=int,
        default=GatewaySettings.in_flight_per_node,
        help="the gateway's cap (its shipped default unless given)",
    )
    parser.add_argument(
        "--direct", action=argparse.BooleanOptionalAction, default=True, help="also straight to TorchServe"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.multiples = [float(m) for m in args.multiples.split(",")]
    key_counts = [int(k) for k in args.keys.split(",")]
    bodies = json_bodies([t.text for t in split_tweets()[1]])
    pinned = len(os.sched_getaffinity(0)) >= 2
    result: dict = {
        "machine": machine(),
        "seconds": args.seconds,
        "multiples": args.multiples,
        "in_flight_per_node": args.in_flight_per_node,
        "pinned": f"servers on CPU {SERVER_CPU}, generator on CPU {GENERATOR_CPU}" if pinned else "no",
        "runs": {},
    }
    cores = os.sched_getaffinity(0)
    if pinned:  # the servers started below inherit it, and every process they start
        os.sched_setaffinity(0, {SERVER_CPU})
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp:
        workdir = Path(tmp) / "ts"
        with LocalTorchServe(model_store=MODEL_STORE, workdir=workdir) as server:
            settings = GatewaySettings(
                free_port(), KEYS, rate_per_s=100_000, burst=100_000, in_flight_per_node=args.in_flight_per_node
            )
            gateway = Gateway(Path(tmp) / "gateway", settings)
            if pinned:
                os.sched_setaffinity(0, {GENERATOR_CPU})
            with gateway_process(gateway, [Node.from_dir(workdir)], {SERVER_CPU} if pinned else None) as process:
                assert process.pid is not None and server.proc is not None
                trees = {"gateway": process.pid, "TorchServe": server.proc.pid}
                direct = server.url("inference", "/predictions/sentiment")
                node_headers = {
                    "Authorization": f"Bearer {server.keys['inference']}",
                    "Content-Type": "application/json",
                }
                run_load(direct, bodies, node_headers, concurrency=16, duration=5, warmup=2)  # warm-up
                capacity = run_load(direct, bodies, node_headers, concurrency=16, duration=15, warmup=3)
                result["capacity"] = capacity.as_dict()
                result["deadline_ms"] = round(4 * capacity.p50_ms, 1)
                log(f"capacity {capacity.throughput_rps:.0f}/s at c=16, p50 {capacity.p50_ms:.0f} ms")
                through = gateway.url("/predictions/sentiment")
                keyed = [{"Authorization": f"Bearer {k}", "Content-Type": "application/json"} for k in KEYS.values()]
                ways = {"straight to TorchServe": (direct, [node_headers])} if args.direct else {}
                for n in key_counts:
                    ways[f"gateway, {n} key{'s' if n > 1 else ''}"] = (through, keyed[:n])
                for way, (url, headers) in ways.items():
                    log_file = gateway.log_file if url == through else None
                    result["runs"][way] = overloads(server, url, headers, bodies, args, capacity, trees, log_file)
    os.sched_setaffinity(0, cores)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overload.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "overload.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
