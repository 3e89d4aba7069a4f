"""The benchmark: every backend raw and served, TorchServe's floor, LitServe and a naive
FastAPI app, in one run.

    python -m bench.run [--duration 15] [--warmup 3] [--out bench/results]   (make bench)

Everything is measured in this one run on this one machine, so the ratios hold even
though a 2-core machine's absolute numbers move with whatever else it does:

  0. the handler's own cost per request at each change that cut it (bench/handler_cost.py,
     handlers/ of every revision in HANDLER_REVISIONS, in-process, the model a constant);
  1. raw limit: each backend x precision in-process (bench/raw.py: the handler's backend
     code, no server), sentences/s at batch 1..32, one process with all cores and one
     process per core;
  2. TorchServe's floor: the shipped handler with no model (bench/noop_handler.py);
  3. every backend x precision served side by side in one TorchServe: load at
     concurrency 1..64, worker memory, archive size, accuracy on all held-out tweets and
     label agreement with PyTorch fp32;
  4. the shipped configuration: workers x threads layouts, batch size and batch delay
     sweeps, REST vs gRPC;
  5. the naive baseline (bench/baseline_app.py) and LitServe (bench/litserve_app.py, a
     small sweep of its batching, then its best at every concurrency);
  6. wrk against each system at the target concurrency, beside bench/loadgen.py;
  7. a soak of the shipped configuration (bench/soak.py).

Request texts are held-out tweets, sent as JSON bodies {"text": ...}, one per request.
Writes results.json, README.md (tables, targets) and PNG charts to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.handler_cost import measure_revisions
from bench.loadgen import json_bodies, run_load
from bench.soak import soak, workers_rss_mib
from bench.wrk import run_wrk
from clients.metrics import total as metric
from common import events
from common.net import free_port, wait_for_port
from common.paths import ARCHIVE_SCRIPT, CONFIG, DEFAULT_MODEL_DIR, LOG_CONFIG, MODEL_CONFIG, ROOT, archive_modules
from common.torchserve_files import read_properties
from testbed.local_server import LocalTorchServe
from training.tweets import LABELS, split_tweets

MODEL_DIR = DEFAULT_MODEL_DIR
CONCURRENCIES = (1, 4, 16, 64)
TARGET_CONCURRENCY = 16
BATCH_SIZES = (1, 4, 8, 16, 32)
BATCH_SWEEP_CONCURRENCY = 32
DELAYS_MS = (1, 2, 5, 10, 25)
DELAY_SWEEP_CONCURRENCY = 16
# every backend x precision, served as a version of one model (the reference first); int8
# runs one text per forward pass (its activation scale is per pass: model-config.yaml)
VARIANTS: dict[str, dict[str, Any]] = {
    "torch-fp32": {"backend": "torch", "quantize": "none", "micro_batch_size": 8},
    "torch-int8": {"backend": "torch", "quantize": "int8", "micro_batch_size": 1},
    "onnxruntime-fp32": {"backend": "onnxruntime", "quantize": "none", "micro_batch_size": 8},
    "onnxruntime-int8": {"backend": "onnxruntime", "quantize": "int8", "micro_batch_size": 1},
}
REFERENCE = "torch-fp32"
# LitServe's own dynamic batching: (max_batch_size, batch_timeout ms, workers, threads each)
LITSERVE_SWEEP = ((8, 5, 1, 2), (16, 10, 1, 2), (16, 5, 2, 1), (32, 10, 1, 2))
# the handler's per-request cost at each cut issue 14 asked for (bench/handler_cost.py), oldest first
HANDLER_REVISIONS = (
    ("before the cuts", "e23b19f"),
    ("metrics per batch, not per request", "cd4f7b9"),
    ("padding with numpy, not the tokenizer", "999fc8b"),
    ("as it is now", "WORKTREE"),
)


def log(message: str) -> None:
    events.log("bench", message)


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import litserve
    import onnxruntime
    import torch  # noqa: F401  (versions only; the load generator stays torch-free otherwise)
    import transformers
    import ts

    return {
        "cpu": cpu,
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": sys.modules["torch"].__version__,
        "onnxruntime": onnxruntime.__version__,
        "transformers": transformers.__version__,
        "torchserve": ts.__version__,
        "litserve": litserve.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def shipped_handler_options() -> dict:
    return yaml.safe_load(MODEL_CONFIG.read_text())["handler"]


def shipped_variant() -> str:
    options = shipped_handler_options()
    name = f"{options.get('backend', 'torch')}-{'int8' if options.get('quantize') == 'int8' else 'fp32'}"
    assert name in VARIANTS and VARIANTS[name]["micro_batch_size"] == options["micro_batch_size"], name
    return name


def shipped_model_settings() -> dict:
    return json.loads(read_properties(CONFIG)["models"])["sentiment"]["1.0"]


def archive(store: Path, filename: str, version: str, options: dict[str, object]) -> Path:
    out = store / filename
    subprocess.run(
        [
            str(ARCHIVE_SCRIPT),
            "--model",
            str(MODEL_DIR),
            "--version",
            version,
            *[a for k, v in options.items() for a in ("--option", f"{k}={v}")],
            "--out",
            str(out),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out


def noop_archive(store: Path) -> None:
    """The floor: TorchServe and the shipped handler with bench/noop_handler.py in front."""
    files = [ROOT / "handlers" / f"{m}.py" for m in ("sentiment_handler", *archive_modules())]
    files += [MODEL_DIR / f for f in ("config.json", "tokenizer.json", "tokenizer_config.json")]
    subprocess.run(
        [
            shutil.which("torch-model-archiver") or str(Path(sys.executable).parent / "torch-model-archiver"),
            "--model-name",
            "sentiment",
            "--version",
            "1.0",
            "--handler",
            str(ROOT / "bench" / "noop_handler.py"),
            "--extra-files",
            ",".join(map(str, files)),
            "--config-file",
            str(MODEL_CONFIG),
            "--export-path",
            str(store),
            "--force",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (store / "sentiment.mar").rename(store / "noop.mar")


def build_archives(store: Path) -> dict[str, dict]:
    """Every variant as a version (1.0 ...), the shipped variant with 1 and 2 threads per
    worker, and the floor; {variant: {"file", "version", "archive_mib"}}."""
    built = {}
    for i, (name, options) in enumerate(VARIANTS.items(), 1):
        path = archive(store, f"{name}.mar", f"{i}.0", options)
        built[name] = {"file": path.name, "version": f"{i}.0", "archive_mib": round(path.stat().st_size / 2**20, 1)}
    # the shipped variant as version 1.0 (TorchServe applies a models= entry to the archive's own
    # version only), with the shipped threads per worker and with 2
    shipped = VARIANTS[shipped_variant()]
    for threads in (1, 2):
        archive(store, f"shipped-{threads}thread.mar", "1.0", {**shipped, "torch_threads": threads})
    noop_archive(store)
    return built


@contextmanager
def serving(
    store: Path,
    workdir: Path,
    versions: dict[str, str],
    batch_size: int,
    delay_ms: int,
    workers: int,
    bodies: list[bytes],
    extra: dict[str, str] | None = None,
    log_config: Path = LOG_CONFIG,
):
    """TorchServe with the shipped config (and `extra` config.properties keys, the log4j2
    config `log_config`), serving `versions` ({version: mar file}), warmed up."""
    entries = {
        version: {
            "defaultVersion": i == 0,
            "marName": mar,
            "minWorkers": workers,
            "maxWorkers": workers,
            "batchSize": batch_size,
            "maxBatchDelay": delay_ms,
        }
        for i, (version, mar) in enumerate(versions.items())
    }
    server = LocalTorchServe(
        model_store=store,
        workdir=workdir,
        overrides={
            "load_models": ",".join(versions.values()),
            "models": json.dumps({"sentiment": entries}),
            **(extra or {}),
        },
        log_config=log_config,
    )
    with server:
        for version in versions:  # beyond the handler's own warm-up: the frontend's paths
            run_load(
                server.url("inference", f"/predictions/sentiment/{version}"),
                bodies,
                {"Authorization": f"Bearer {server.keys['inference']}", "Content-Type": "application/json"},
                concurrency=8,
                duration=2.0,
                warmup=0.0,
            )
        yield server


def batch_stats(server: LocalTorchServe) -> tuple[float, float]:
    """(batches, requests) the handler has seen so far, from the metrics endpoint."""
    samples = server.client.metric_samples()
    return metric(samples, "SentimentBatchSize_count"), metric(samples, "SentimentBatchSize_sum")


def cpu_seconds(procs: list[psutil.Process]) -> dict[str, float]:
    """CPU time so far of the servers' processes (by kind), this process, and the machine."""
    times = {"frontend": 0.0, "workers": 0.0}
    for proc in procs:
        for p in [proc, *proc.children(recursive=True)]:
            try:
                cpu = p.cpu_times()
                kind = "workers" if "python" in p.name() else "frontend"
                times[kind] += cpu.user + cpu.system
            except psutil.NoSuchProcess:
                pass
    mine = psutil.Process().cpu_times()
    times["load generator"] = mine.user + mine.system
    machine_cpu = psutil.cpu_times()
    times["machine"] = machine_cpu.user + machine_cpu.system + machine_cpu.nice
    return times


def measured(url: str, bodies: list[bytes], headers: dict, concurrency: int, args, procs=(), server=None) -> dict:
    """One closed-loop load point, with the CPU it took and, on TorchServe, its batch sizes."""
    before = batch_stats(server) if server else None
    cpu_before, wall_before = cpu_seconds(list(procs)), time.time()
    result = run_load(url, bodies, headers, concurrency, args.duration, args.warmup).as_dict()
    cpu_after, wall = cpu_seconds(list(procs)), time.time() - wall_before
    if server:
        after = batch_stats(server)
        batches = after[0] - before[0]
        result["mean_batch_size"] = (after[1] - before[1]) / batches if batches else None
    result["cores_used"] = {k: round((cpu_after[k] - cpu_before[k]) / wall, 2) for k in cpu_after}
    batch = f"  mean batch {result['mean_batch_size']:.1f}" if result.get("mean_batch_size") else ""
    log(
        f"  c={concurrency:<3} {result['throughput_rps']:7.1f} req/s  p50 {result['p50_ms']:6.1f} ms  "
        f"p99 {result['p99_ms']:6.1f} ms  errors {result['errors']}{batch}"
    )
    return result


def drive(server: LocalTorchServe, bodies: list[bytes], concurrency: int, args, version: str = "") -> dict:
    path = "/predictions/sentiment" + (f"/{version}" if version else "")
    return measured(
        server.url("inference", path),
        bodies,
        ts_headers(server),
        concurrency,
        args,
        [psutil.Process(server.proc.pid)],
        server,
    )


def ts_headers(server: LocalTorchServe) -> dict:
    return {"Authorization": f"Bearer {server.keys['inference']}", "Content-Type": "application/json"}


def drive_grpc(server: LocalTorchServe, texts: list[str], concurrency: int, args, version: str) -> dict:
    from bench.grpc_load import run_grpc_load

    result = run_grpc_load(
        f"127.0.0.1:{server.ports['grpc_inference']}",
        server.keys["inference"],
        [{"text": t} for t in texts],
        concurrency,
        args.duration,
        args.warmup,
        version=version,
    ).as_dict()
    log(
        f"  gRPC c={concurrency:<3} {result['throughput_rps']:7.1f} req/s  p50 {result['p50_ms']:6.1f} ms  "
        f"p99 {result['p99_ms']:6.1f} ms  errors {result['errors']}"
    )
    return result


def worker_rss_mib(server: LocalTorchServe, version: str) -> float:
    return sum(workers_rss_mib(server, f"sentiment/{version}").values())


def served_labels(server: LocalTorchServe, version: str, heldout) -> list[str]:
    labels = []
    for start in range(0, len(heldout), 32):
        chunk = heldout[start : start + 32]
        status, answer = server.client.predict(
            {"text": [t.text for t in chunk]}, model=f"sentiment/{version}", timeout=120
        )
        assert status == 200, answer
        labels += [a["label"] for a in answer]
    return labels


def raw_model_dir(work: Path, variant: str) -> Path:
    """A checkpoint folder the variant's backend runs from (the exported graph beside it)."""
    options = VARIANTS[variant]
    if options["backend"] != "onnxruntime":
        return MODEL_DIR
    folder = work / f"raw-{variant}"
    shutil.copytree(MODEL_DIR, folder, dirs_exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "handlers" / "export_onnx.py"),
            str(MODEL_DIR),
            str(folder),
            "--quantize",
            options["quantize"],
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return folder


def raw_limit(texts_file: Path, variant: str, model_dir: Path, args) -> dict:
    """One in-process model using all cores, plain and micro-batched; then one process per
    core with one thread each (micro-batched), their throughputs added up."""
    options = VARIANTS[variant]
    log(f"raw in-process model, {variant}")
    command = [
        sys.executable,
        "-m",
        "bench.raw",
        "--model",
        str(model_dir),
        "--texts",
        str(texts_file),
        "--backend",
        options["backend"],
        "--quantize",
        options["quantize"],
        "--micro-batch-size",
        str(options["micro_batch_size"]),
        "--duration",
        str(args.raw_duration),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "handlers"))  # the handler's backend code, as in an archive
    single = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    result = json.loads(single.stdout)
    cores = len(os.sched_getaffinity(0))
    log(f"raw: {cores} processes x 1 thread, {variant}")
    procs = [
        subprocess.Popen(
            command + ["--threads", "1", "--ways", "micro"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for _ in range(cores)
    ]
    outputs = [json.loads(p.communicate()[0]) for p in procs]
    result["parallel"] = {
        "processes": cores,
        "threads": 1,
        "results": [
            {
                "batch_size": rows[0]["batch_size"],
                "sentences_per_s": sum(r["sentences_per_s"] for r in rows),
                "batch_p50_ms": max(r["batch_p50_ms"] for r in rows),
            }
            for rows in zip(*(o["results"]["micro"] for o in outputs), strict=True)
        ],
    }
    best = max(r["sentences_per_s"] for way in result["results"].values() for r in way)
    log(
        f"  best {best:.1f} sentences/s in one process; "
        f"{max(r['sentences_per_s'] for r in result['parallel']['results']):.1f} in {cores}"
    )
    return result


@contextmanager
def http_app(command: list[str], port: int, workdir: Path, name: str, env=None):
    """A server process of the benchmark's own (its process group), up on `port`."""
    with open(workdir / f"{name}.log", "wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:

        def alive() -> None:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: see {workdir / f'{name}.log'}")

        wait_for_port("127.0.0.1", port, 180, alive)
        yield proc
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM to the server's process group, then wait until every process of it is gone
    (SIGKILL past `grace_s`): a worker process that outlives its server (LitServe's went on
    for seconds at 40% of a core) would take the cores from whatever is measured next."""
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while True:
        try:
            proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.1)


def app_load(port: int, bodies: list[bytes], proc, args, concurrencies=CONCURRENCIES) -> dict:
    url = f"http://127.0.0.1:{port}/predict"
    headers = {"Content-Type": "application/json"}
    run_load(url, bodies, headers, concurrency=8, duration=3.0, warmup=0.0)  # warm-up, as for TorchServe
    return {str(c): measured(url, bodies, headers, c, args, [psutil.Process(proc.pid)]) for c in concurrencies}


def baseline_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.baseline_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def litserve_command(port: int, setting: tuple[int, int, int, int], onnx_dir: Path | None = None) -> list[str]:
    """LitServe at a LITSERVE_SWEEP setting: (max_batch_size, batch_timeout ms, workers, threads each)."""
    batch, timeout_ms, workers, threads = setting
    onnx = [] if onnx_dir is None else ["--onnx"]
    return [
        sys.executable,
        "-m",
        "bench.litserve_app",
        "--model",
        str(MODEL_DIR if onnx_dir is None else onnx_dir),
        "--port",
        str(port),
        "--batch",
        str(batch),
        "--timeout-ms",
        str(timeout_ms),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--max-length",
        str(shipped_handler_options()["max_length"]),
        *onnx,
    ]


def litserve_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT / "handlers"))  # --onnx runs the handler's backend code


def litserve_runs(work: Path, bodies: list[bytes], args, onnx_dir: Path | None) -> dict:
    """LitServe's settings swept at the target concurrency; its best at every concurrency."""
    sweep = {}
    for setting in LITSERVE_SWEEP:
        port = free_port()
        with http_app(litserve_command(port, setting, onnx_dir), port, work, "litserve", litserve_env()) as proc:
            log(f" {batching_label(setting)}")
            sweep[batching_label(setting)] = app_load(port, bodies, proc, args, (TARGET_CONCURRENCY,))
    best = max(LITSERVE_SWEEP, key=lambda s: sweep[batching_label(s)][str(TARGET_CONCURRENCY)]["throughput_rps"])
    port = free_port()
    with http_app(litserve_command(port, best, onnx_dir), port, work, "litserve", litserve_env()) as proc:
        log(f" best: {batching_label(best)}")
        return {
            "sweep": sweep,
            "best": batching_label(best),
            "best_setting": list(best),
            "load": app_load(port, bodies, proc, args),
        }


def batching_label(setting) -> str:
    """A peer's batching setting, (max batch size, wait ms, workers, threads each), as the
    results name it (LitServe's batch_timeout and mosec's max_wait_time are the wait)."""
    batch, wait_ms, workers, threads = setting
    return f"batch {batch}, {wait_ms} ms, {workers} worker(s) x {threads} thread(s)"


def compare_with_wrk(name: str, url: str, bodies: list[bytes], headers: dict, args, header=None) -> dict:
    """The same system at the target concurrency, by bench/loadgen.py and then by wrk."""
    c = TARGET_CONCURRENCY
    ours = run_load(url, bodies, headers, c, args.duration, args.warmup).as_dict()
    theirs = run_wrk(url, bodies, c, args.duration, header)
    ratio = ours["throughput_rps"] / theirs["throughput_rps"]
    log(
        f"  {name}: loadgen {ours['throughput_rps']:.1f} req/s, wrk {theirs['throughput_rps']:.1f} req/s "
        f"(ratio {ratio:.2f}); p50 {ours['p50_ms']:.1f} vs {theirs['p50_ms']:.1f} ms"
    )
    return {"loadgen": ours, "wrk": theirs, "ratio": round(ratio, 3)}


def write_results(out: Path, filename: str, results: dict, work: Path) -> Path:
    """A benchmark's results as JSON in `out`, its work folder removed; the file's path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    path.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return path


def workspace(prefix: str, texts: list[str]) -> tuple[list[str], list[bytes], Path, Path, Path]:
    """The held-out texts, their request bodies, a fresh work folder, the texts as a JSON
    file in it (for bench/raw.py) and an empty model store in it."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(texts))
    store = work / "store"
    store.mkdir()
    return texts, json_bodies(texts), work, texts_file, store


def shipped_workspace(prefix: str) -> tuple[list[bytes], Path, Path, Path, str, int]:
    """workspace() on the held-out tweets with the shipped archive in its store, as
    shipped.mar (the shipped variant, with the shipped threads per worker): the bodies, the
    work folder, the texts file, the store, the variant and the threads."""
    _, bodies, work, texts_file, store = workspace(prefix, [t.text for t in split_tweets()[1]])
    variant = shipped_variant()
    threads = shipped_handler_options()["torch_threads"]
    archive(store, "shipped.mar", "1.0", {**VARIANTS[variant], "torch_threads": threads})
    return bodies, work, texts_file, store, variant, threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per point")
    parser.add_argument("--raw-duration", type=float, default=6.0, help="seconds per raw batch size")
    parser.add_argument("--soak-minutes", type=float, default=3.0, help="length of the soak phase")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    if not (MODEL_DIR / "config.json").is_file():
        raise SystemExit(f"{MODEL_DIR} is missing: run `make bench`, which builds it")
    started = time.time()
    _, heldout = split_tweets()
    texts, bodies, work, texts_file, store = workspace("bench-", [t.text for t in heldout])
    log(f"building archives in {store}")
    archives = build_archives(store)
    shipped_name = shipped_variant()
    shipped = shipped_model_settings()
    batch, delay, workers = shipped["batchSize"], shipped["maxBatchDelay"], shipped["maxWorkers"]
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "raw_duration_s": args.raw_duration,
            "texts": f"{len(texts)} held-out tweets, one per request, JSON body",
            "shipped": shipped,
            "shipped_variant": shipped_name,
            "shipped_handler": shipped_handler_options(),
            "variants": VARIANTS,
            "reference": REFERENCE,
            "concurrencies": list(CONCURRENCIES),
            "target_concurrency": TARGET_CONCURRENCY,
            "batch_sizes": list(BATCH_SIZES),
            "batch_sweep_concurrency": BATCH_SWEEP_CONCURRENCY,
            "delays_ms": list(DELAYS_MS),
            "delay_sweep_concurrency": DELAY_SWEEP_CONCURRENCY,
            "litserve_sweep": [batching_label(s) for s in LITSERVE_SWEEP],
            "soak_minutes": args.soak_minutes,
        },
    }
    log("the handler's own cost per request at each cut (bench/handler_cost.py)")
    costs = measure_revisions([rev for _, rev in HANDLER_REVISIONS], MODEL_DIR, texts)
    results["handler_cost"] = {label: {"revision": rev, **costs[rev]} for label, rev in HANDLER_REVISIONS}
    raw_dirs = {v: raw_model_dir(work, v) for v in VARIANTS}
    results["raw"] = {v: raw_limit(texts_file, v, raw_dirs[v], args) for v in VARIANTS}

    n = 0

    def server_dir() -> Path:
        nonlocal n
        n += 1
        return work / f"ts{n}"

    log(f"TorchServe's floor: the shipped handler without a model ({workers} workers, batch {batch}, {delay} ms)")
    with serving(store, server_dir(), {"1.0": "noop.mar"}, batch, delay, workers, bodies) as server:
        results["floor"] = {str(c): drive(server, bodies, c, args) for c in (1, TARGET_CONCURRENCY)}
        floor_wrk = compare_with_wrk(
            "floor",
            server.url("inference", "/predictions/sentiment"),
            bodies,
            ts_headers(server),
            args,
            ("Authorization", f"Bearer {server.keys['inference']}"),
        )

    log(
        "every backend x precision served side by side "
        f"({workers} workers x {shipped_handler_options()['torch_threads']} thread, batch {batch}, {delay} ms)"
    )
    versions = {a["version"]: a["file"] for a in archives.values()}
    with serving(store, server_dir(), versions, batch, delay, workers, bodies) as server:
        side = {}
        for name, built in archives.items():
            log(f" {name} ({built['version']})")
            side[name] = {
                **built,
                "load": {str(c): drive(server, bodies, c, args, built["version"]) for c in CONCURRENCIES},
                "worker_rss_mib": round(worker_rss_mib(server, built["version"]), 1),
            }
        gold = [LABELS[t.label] for t in heldout]
        labels = {name: served_labels(server, side[name]["version"], heldout) for name in side}
        for name in side:
            side[name]["heldout_accuracy"] = sum(a == b for a, b in zip(labels[name], gold, strict=True)) / len(gold)
            side[name]["label_agreement"] = sum(
                a == b for a, b in zip(labels[name], labels[REFERENCE], strict=True)
            ) / len(gold)
            log(
                f" {name}: accuracy {side[name]['heldout_accuracy']:.4f}, agreement with {REFERENCE} "
                f"{side[name]['label_agreement']:.4f}, worker RSS {side[name]['worker_rss_mib']:.0f} MiB, "
                f"archive {side[name]['archive_mib']} MiB"
            )
        results["served"] = side

    log(f"layouts of the shipped variant ({shipped_name}): workers x threads at concurrency 1 and {TARGET_CONCURRENCY}")
    results["workers_sweep"] = {}
    for w, threads in ((1, 2), (2, 1)):
        with serving(store, server_dir(), {"1.0": f"shipped-{threads}thread.mar"}, batch, delay, w, bodies) as server:
            label = f"{w} worker(s) x {threads} thread(s)"
            log(f" {label}")
            results["workers_sweep"][label] = {f"c{c}": drive(server, bodies, c, args) for c in (1, TARGET_CONCURRENCY)}

    shipped_mar = f"shipped-{shipped_handler_options()['torch_threads']}thread.mar"
    log(f"batch size sweep at concurrency {BATCH_SWEEP_CONCURRENCY} (delay {delay} ms)")
    results["batch_sweep"] = {}
    for b in BATCH_SIZES:
        with serving(store, server_dir(), {"1.0": shipped_mar}, b, delay, workers, bodies) as server:
            log(f" batch {b}")
            results["batch_sweep"][str(b)] = drive(server, bodies, BATCH_SWEEP_CONCURRENCY, args)

    log(f"max batch delay sweep at concurrency {DELAY_SWEEP_CONCURRENCY} (batch {batch})")
    results["delay_sweep"] = {}
    for d in DELAYS_MS:
        with serving(store, server_dir(), {"1.0": shipped_mar}, batch, d, workers, bodies) as server:
            log(f" delay {d} ms")
            results["delay_sweep"][str(d)] = {
                "c1": drive(server, bodies, 1, args),
                f"c{DELAY_SWEEP_CONCURRENCY}": drive(server, bodies, DELAY_SWEEP_CONCURRENCY, args),
            }

    log(f"the shipped configuration: REST vs gRPC at concurrency {TARGET_CONCURRENCY}, and wrk")
    with serving(store, server_dir(), {"1.0": shipped_mar}, batch, delay, workers, bodies) as server:
        results["rest_vs_grpc"] = {
            "rest": drive(server, bodies, TARGET_CONCURRENCY, args),
            "grpc": drive_grpc(server, texts, TARGET_CONCURRENCY, args, "1.0"),
        }
        wrk_checks = {
            "TorchServe, shipped": compare_with_wrk(
                "TorchServe, shipped",
                server.url("inference", "/predictions/sentiment"),
                bodies,
                ts_headers(server),
                args,
                ("Authorization", f"Bearer {server.keys['inference']}"),
            )
        }
    wrk_checks["TorchServe floor"] = floor_wrk

    log("naive baseline: FastAPI, model called inline, no batching")
    port = free_port()
    env = dict(os.environ, MODEL_DIR=str(MODEL_DIR))
    with http_app(baseline_command(port), port, work, "baseline", env) as proc:
        results["baseline"] = app_load(port, bodies, proc, args)
        wrk_checks["naive FastAPI"] = compare_with_wrk(
            "naive FastAPI", f"http://127.0.0.1:{port}/predict", bodies, {"Content-Type": "application/json"}, args
        )

    for key, name, onnx_dir in (
        ("litserve", "LitServe", None),
        ("litserve_int8", "LitServe int8", raw_dirs[shipped_name]),
    ):
        what = "PyTorch fp32" if onnx_dir is None else "the shipped int8 ONNX graph, the handler's backend code"
        log(f"{name} ({what}): its batching at concurrency {TARGET_CONCURRENCY}, then its best at every concurrency")
        results[key] = litserve_runs(work, bodies, args, onnx_dir)
        best_setting = next(s for s in LITSERVE_SWEEP if batching_label(s) == results[key]["best"])
        port = free_port()
        with http_app(litserve_command(port, best_setting, onnx_dir), port, work, key, litserve_env()):
            wrk_checks[name] = compare_with_wrk(
                name, f"http://127.0.0.1:{port}/predict", bodies, {"Content-Type": "application/json"}, args
            )
    results["wrk_check"] = wrk_checks

    log(f"soak: {args.soak_minutes} min at concurrency {TARGET_CONCURRENCY}, as shipped")
    soak_store = work / "soak-store"
    soak_store.mkdir()
    shutil.copy(store / shipped_mar, soak_store / "sentiment.mar")
    results["soak"] = soak(soak_store, args.soak_minutes, TARGET_CONCURRENCY, server_dir(), log)
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
