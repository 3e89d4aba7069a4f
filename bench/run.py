"""The benchmark: raw model vs TorchServe vs a naive FastAPI app, in one run.

    python -m bench.run [--duration 15] [--warmup 3] [--out bench/results]   (make bench)

Everything is measured in this one run on this one machine, so the ratios hold even
though a 2-core machine's absolute numbers move with whatever else it does:

  1. raw limit: the model in-process (bench/raw.py), sentences/s at batch 1..32, fp32/int8;
  2. TorchServe as shipped (config.properties): closed-loop load at concurrency 1..64;
  3. sweeps of the TorchServe batch size and max batch delay at a fixed concurrency,
     and of workers x torch threads per worker;
  4. fp32 (1.0) and int8 (2.0) archives served side by side in one TorchServe:
     throughput, latency, worker memory, accuracy on all held-out tweets;
  5. REST vs gRPC (bench/grpc_load.py) at one concurrency on the same server;
  6. the naive baseline (bench/baseline_app.py) under the same load;
  7. a soak (bench/soak.py): minutes of load, worker memory before and after.

Request texts are held-out tweets, sent as JSON bodies {"text": ...}, one per request.
Writes results.json, README.md (tables, targets) and PNG charts to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

from bench.loadgen import json_bodies, run_load
from bench.soak import soak, workers_rss_mib
from clients.metrics import total as metric
from clients.net import free_port, wait_for_port
from clients.torchserve import read_properties
from server.paths import ARCHIVE_SCRIPT, CONFIG, DEFAULT_MODEL_DIR, ROOT
from testbed.local_server import LocalTorchServe
from training.tweets import LABELS, split_tweets

MODEL_DIR = DEFAULT_MODEL_DIR
CONCURRENCIES = (1, 4, 16, 64)
BATCH_SIZES = (1, 4, 8, 16, 32)
BATCH_SWEEP_CONCURRENCY = 32
DELAYS_MS = (1, 2, 5, 10, 25)
DELAY_SWEEP_CONCURRENCY = 16
TARGET_CONCURRENCY = 16


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch  # noqa: F401  (version only; the load generator stays torch-free otherwise)
    import transformers
    import ts

    return {
        "cpu": cpu,
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": sys.modules["torch"].__version__,
        "transformers": transformers.__version__,
        "torchserve": ts.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def build_archives(store: Path) -> None:
    """The shipped fp32 archive (1.0), its int8 twin (2.0), and fp32 with a given thread
    count per worker (for the workers x threads comparison)."""
    variants = {
        "sentiment.mar": ("1.0", []),
        "sentiment-int8.mar": ("2.0", ["--option", "quantize=int8"]),
        "sentiment-1thread.mar": ("1.0", ["--option", "torch_threads=1"]),
        "sentiment-2threads.mar": ("1.0", ["--option", "torch_threads=2"]),
    }
    for filename, (version, options) in variants.items():
        subprocess.run(
            [str(ARCHIVE_SCRIPT), "--model", str(MODEL_DIR), "--version", version,
             *options, "--out", str(store / filename)],
            check=True, stdout=subprocess.DEVNULL,
        )


def shipped_model_settings() -> dict:
    return json.loads(read_properties(CONFIG)["models"])["sentiment"]["1.0"]


@contextmanager
def serving(store: Path, workdir: Path, versions: dict[str, str], batch_size: int, delay_ms: int,
            workers: int, bodies: list[bytes]):
    """TorchServe with the shipped config, serving `versions` ({version: mar file}), warmed up."""
    entries = {
        version: {
            "defaultVersion": i == 0, "marName": mar, "minWorkers": workers, "maxWorkers": workers,
            "batchSize": batch_size, "maxBatchDelay": delay_ms,
        }
        for i, (version, mar) in enumerate(versions.items())
    }
    server = LocalTorchServe(
        model_store=store,
        workdir=workdir,
        overrides={"load_models": ",".join(versions.values()),
                   "models": json.dumps({"sentiment": entries})},
    )
    with server:
        for version in versions:  # the first batches of a new worker are slow
            run_load(server.url("inference", f"/predictions/sentiment/{version}"), bodies,
                     {"Authorization": f"Bearer {server.keys['inference']}",
                      "Content-Type": "application/json"},
                     concurrency=8, duration=2.0, warmup=0.0)
        yield server


def batch_stats(server: LocalTorchServe) -> tuple[float, float]:
    """(batches, requests) the handler has seen so far, from the metrics endpoint."""
    samples = server.client.metric_samples()
    return metric(samples, "SentimentBatchSize_count"), metric(samples, "SentimentBatchSize_sum")


def cpu_seconds(server: LocalTorchServe) -> dict[str, float]:
    """CPU time so far of the TorchServe frontend (java), its workers and this process."""
    launcher = psutil.Process(server.proc.pid)
    times = {"frontend": 0.0, "workers": 0.0}
    for proc in launcher.children(recursive=True):
        try:
            cpu = proc.cpu_times()
            times["workers" if "python" in proc.name() else "frontend"] += cpu.user + cpu.system
        except psutil.NoSuchProcess:
            pass
    mine = psutil.Process().cpu_times()
    times["load generator"] = mine.user + mine.system
    return times


def drive(server: LocalTorchServe, bodies: list[bytes], concurrency: int, args, version: str = "") -> dict:
    path = "/predictions/sentiment" + (f"/{version}" if version else "")
    before = batch_stats(server)
    cpu_before, wall_before = cpu_seconds(server), time.time()
    result = run_load(
        server.url("inference", path), bodies,
        {"Authorization": f"Bearer {server.keys['inference']}", "Content-Type": "application/json"},
        concurrency, args.duration, args.warmup,
    ).as_dict()
    cpu_after, wall = cpu_seconds(server), time.time() - wall_before
    after = batch_stats(server)
    batches = after[0] - before[0]
    result["mean_batch_size"] = (after[1] - before[1]) / batches if batches else None
    result["cores_used"] = {k: round((cpu_after[k] - cpu_before[k]) / wall, 2) for k in cpu_after}
    log(f"  c={concurrency:<3} {result['throughput_rps']:7.1f} req/s  p50 {result['p50_ms']:6.1f} ms  "
        f"p99 {result['p99_ms']:6.1f} ms  errors {result['errors']}  mean batch {result['mean_batch_size']}")
    return result


def drive_grpc(server: LocalTorchServe, texts: list[str], concurrency: int, args, version: str) -> dict:
    from bench.grpc_load import run_grpc_load

    result = run_grpc_load(f"127.0.0.1:{server.ports['grpc_inference']}", server.keys["inference"],
                           [{"text": t} for t in texts], concurrency, args.duration, args.warmup,
                           version=version).as_dict()
    log(f"  gRPC c={concurrency:<3} {result['throughput_rps']:7.1f} req/s  p50 {result['p50_ms']:6.1f} ms  "
        f"p99 {result['p99_ms']:6.1f} ms  errors {result['errors']}")
    return result


def worker_rss_mib(server: LocalTorchServe, version: str) -> float:
    return sum(workers_rss_mib(server, f"sentiment/{version}").values())


def served_accuracy(server: LocalTorchServe, version: str, heldout) -> float:
    correct = 0
    for start in range(0, len(heldout), 32):
        chunk = heldout[start : start + 32]
        status, answer = server.client.predict({"text": [t.text for t in chunk]},
                                               model=f"sentiment/{version}", timeout=120)
        assert status == 200, answer
        correct += sum(a["label"] == LABELS[t.label] for a, t in zip(answer, chunk))
    return correct / len(heldout)


def raw_limit(texts_file: Path, quantize: str, args) -> dict:
    """One in-process model using all cores, plain and micro-batched; then one process per
    core with one thread each (micro-batched), their throughputs added up."""
    log(f"raw in-process model, {quantize}")
    command = [sys.executable, "-m", "bench.raw", "--model", str(MODEL_DIR), "--texts", str(texts_file),
               "--quantize", quantize, "--duration", str(args.raw_duration)]
    single = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    sys.stderr.write(single.stderr)
    result = json.loads(single.stdout)

    cores = len(os.sched_getaffinity(0))
    log(f"raw: {cores} processes x 1 thread, {quantize}")
    procs = [subprocess.Popen(command + ["--threads", "1", "--ways", "micro"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, cwd=ROOT) for _ in range(cores)]
    outputs = [json.loads(p.communicate()[0]) for p in procs]
    result["parallel"] = {"processes": cores, "threads": 1, "results": [
        {"batch_size": rows[0]["batch_size"],
         "sentences_per_s": sum(r["sentences_per_s"] for r in rows),
         "batch_p50_ms": max(r["batch_p50_ms"] for r in rows)}
        for rows in zip(*(o["results"]["micro"] for o in outputs))
    ]}
    for row in result["parallel"]["results"]:
        log(f"  batch {row['batch_size']}: {row['sentences_per_s']:.1f} sentences/s together")
    return result


def _check_running(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"baseline server exited with {proc.returncode}")


def baseline(bodies: list[bytes], args, workdir: Path) -> dict:
    log("naive baseline: FastAPI, model called inline, no batching")
    port = free_port()
    with open(workdir / "baseline.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, env=dict(os.environ, MODEL_DIR=str(MODEL_DIR)), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for_port("127.0.0.1", port, 120, alive=lambda: _check_running(proc))
        run_load(f"http://127.0.0.1:{port}/predict", bodies, {"Content-Type": "application/json"},
                 concurrency=8, duration=2.0, warmup=0.0)  # warm-up, as for TorchServe
        results = {}
        for c in CONCURRENCIES:
            r = run_load(f"http://127.0.0.1:{port}/predict", bodies,
                         {"Content-Type": "application/json"}, c, args.duration, args.warmup).as_dict()
            log(f"  c={c:<3} {r['throughput_rps']:7.1f} req/s  p50 {r['p50_ms']:6.1f} ms  "
                f"p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}")
            results[str(c)] = r
        return results
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per point")
    parser.add_argument("--raw-duration", type=float, default=8.0, help="seconds per raw batch size")
    parser.add_argument("--soak-minutes", type=float, default=3.0, help="length of the soak phase")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    if not (MODEL_DIR / "config.json").is_file():
        raise SystemExit(f"{MODEL_DIR} is missing: run `make bench`, which builds it")
    started = time.time()
    _, heldout = split_tweets()
    texts = [t.text for t in heldout]
    bodies = json_bodies(texts)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(texts))
    store = work / "store"
    log(f"building archives in {store}")
    build_archives(store)

    results = {"machine": machine(), "settings": {
        "duration_s": args.duration, "warmup_s": args.warmup, "raw_duration_s": args.raw_duration,
        "texts": f"{len(texts)} held-out tweets, one per request, JSON body",
        "shipped": shipped_model_settings(),
        "concurrencies": list(CONCURRENCIES),
        "target_concurrency": TARGET_CONCURRENCY,
        "batch_sizes": list(BATCH_SIZES),
        "batch_sweep_concurrency": BATCH_SWEEP_CONCURRENCY,
        "delays_ms": list(DELAYS_MS),
        "delay_sweep_concurrency": DELAY_SWEEP_CONCURRENCY,
        "soak_minutes": args.soak_minutes,
    }}
    results["raw"] = {q: raw_limit(texts_file, q, args) for q in ("none", "int8")}

    shipped = shipped_model_settings()
    batch, delay, workers = shipped["batchSize"], shipped["maxBatchDelay"], shipped["maxWorkers"]
    fp32_mar = "sentiment.mar"
    n = 0

    def server_dir() -> Path:
        nonlocal n
        n += 1
        return work / f"ts{n}"

    log(f"TorchServe as shipped (batch {batch}, delay {delay} ms, {workers} worker(s)), fp32 1.0 "
        "and int8 2.0 side by side")
    with serving(store, server_dir(), {"1.0": fp32_mar, "2.0": "sentiment-int8.mar"}, batch, delay,
                 workers, bodies) as server:
        side = {}
        for version, name in (("1.0", "fp32"), ("2.0", "int8")):
            log(f" version {version} ({name})")
            side[name] = {
                "version": version,
                "load": {str(c): drive(server, bodies, c, args, version) for c in CONCURRENCIES},
                "worker_rss_mib": worker_rss_mib(server, version),
            }
        for name in ("fp32", "int8"):
            side[name]["heldout_accuracy"] = served_accuracy(server, side[name]["version"], heldout)
            log(f" {name} held-out accuracy {side[name]['heldout_accuracy']:.4f}, "
                f"worker RSS {side[name]['worker_rss_mib']:.0f} MiB")
        results["served"] = side
        log(f" REST vs gRPC at concurrency {TARGET_CONCURRENCY} (fp32 1.0)")
        results["rest_vs_grpc"] = {
            "rest": drive(server, bodies, TARGET_CONCURRENCY, args, "1.0"),
            "grpc": drive_grpc(server, texts, TARGET_CONCURRENCY, args, "1.0"),
        }

    log(f"batch size sweep at concurrency {BATCH_SWEEP_CONCURRENCY} (delay {delay} ms)")
    results["batch_sweep"] = {}
    for b in BATCH_SIZES:
        with serving(store, server_dir(), {"1.0": fp32_mar}, b, delay, workers, bodies) as server:
            log(f" batch {b}")
            results["batch_sweep"][str(b)] = drive(server, bodies, BATCH_SWEEP_CONCURRENCY, args)

    log(f"max batch delay sweep at concurrency {DELAY_SWEEP_CONCURRENCY} (batch {batch})")
    results["delay_sweep"] = {}
    for d in DELAYS_MS:
        with serving(store, server_dir(), {"1.0": fp32_mar}, batch, d, workers, bodies) as server:
            log(f" delay {d} ms")
            results["delay_sweep"][str(d)] = {
                "c1": drive(server, bodies, 1, args),
                f"c{DELAY_SWEEP_CONCURRENCY}": drive(server, bodies, DELAY_SWEEP_CONCURRENCY, args),
            }

    log(f"workers x threads at concurrency {TARGET_CONCURRENCY}")
    results["workers_sweep"] = {}
    for w, threads in ((1, 2), (2, 1)):
        with serving(store, server_dir(), {"1.0": f"sentiment-{threads}thread{'s' * (threads > 1)}.mar"},
                     batch, delay, w, bodies) as server:
            label = f"{w} worker(s) x {threads} thread(s)"
            log(f" {label}")
            results["workers_sweep"][label] = {
                f"c{c}": drive(server, bodies, c, args) for c in (1, TARGET_CONCURRENCY)
            }

    results["baseline"] = baseline(bodies, args, work)

    log(f"soak: {args.soak_minutes} min at concurrency {TARGET_CONCURRENCY}, as shipped")
    results["soak"] = soak(store, args.soak_minutes, TARGET_CONCURRENCY, server_dir(), log)
    results["elapsed_s"] = round(time.time() - started)

    from bench.report import write_report

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.out)
    log(f"done in {results['elapsed_s']} s; results in {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
