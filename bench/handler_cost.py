"""What the handler itself costs per request, at several git revisions of handlers/.

    python -m bench.handler_cost [--rev REV ...] [--rounds 3]   (bench/run.py runs it)

Each revision's handlers/ and metrics.yaml are taken from git (`WORKTREE`: the files as
they are now) and loaded the way a TorchServe worker loads an archive: TorchServe's own
model loader, metrics cache and `Service.predict`, logging set up as the worker sets it up
(one line per record, flushed). The model is then replaced by a constant
(bench/noop_handler.NoModel), so what is timed is everything a worker does per batch but
the forward pass: reading TorchServe's batch, parsing, tokenizing, padding, metrics, the
answers. Batches of real held-out tweets as JSON bodies, at batch sizes 1 and 16; CPU
microseconds per request and metric lines per request. Every revision runs in a process
of its own, revisions alternate over rounds, and the median of the rounds is kept, so
the differences between revisions come from one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.paths import ROOT

BATCH_SIZES = (1, 16)
REQUESTS = 3200  # per batch size and round
# what the worker sends with a request from a typical client (TorchServe passes every header on)
HEADERS = {
    "host": "127.0.0.1:8080",
    "user-agent": "python-requests/2.32",
    "accept": "*/*",
    "content-type": "application/json",
    "authorization": "Bearer withheld",
}
# the handler options the revisions run with: the shipped micro-batching, PyTorch loaded
# (every revision has it) and then replaced by the constant
OPTIONS = {"backend": "torch", "quantize": "none", "micro_batch_size": 1, "torch_threads": 1}


def revision_dir(rev: str, model_dir: Path, into: Path) -> Path:
    """An unpacked archive as TorchServe's worker sees it: the handler files of `rev`, the
    checkpoint's files, model-config.yaml, the manifest; and that revision's metrics.yaml beside it."""
    into.mkdir(parents=True)
    if rev == "WORKTREE":
        for f in (ROOT / "handlers").glob("*.py"):
            shutil.copy(f, into / f.name)
        shutil.copy(ROOT / "metrics.yaml", into / "metrics.yaml")
    else:
        names = subprocess.run(
            ["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{rev}:handlers"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        for name in [f"handlers/{n}" for n in names if n.endswith(".py")] + ["metrics.yaml"]:
            source = subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{rev}:{name}"], check=True, capture_output=True
            ).stdout
            (into / Path(name).name).write_bytes(source)
    for f in model_dir.iterdir():
        if f.suffix in (".json", ".safetensors"):
            (into / f.name).symlink_to(f)
    (into / "model-config.yaml").write_text(json.dumps({"handler": {**OPTIONS, "warmup_batches": 1}}))
    (into / "MAR-INF").mkdir()
    (into / "MAR-INF" / "MANIFEST.json").write_text(
        json.dumps(
            {
                "runtime": "python",
                "model": {
                    "modelName": "sentiment",
                    "handler": "sentiment_handler.py",
                    "modelVersion": "1.0",
                    "configFile": "model-config.yaml",
                },
            }
        )
    )
    return into


def request(i: int, body: bytes) -> dict:
    """One request as TorchServe's frontend hands it to the worker."""
    return {
        "requestId": f"bench-{i}".encode(),
        "parameters": [{"name": "body", "value": body, "contentType": "application/json"}],
        "headers": [{"name": k.encode(), "value": v.encode()} for k, v in HEADERS.items()],
    }


class CountMetricLines(logging.Filter):
    lines = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("[METRICS]"):
            self.lines += 1
        return True


def measure_one(directory: Path, texts: list[str]) -> dict:
    """In this process (started with `directory` on PYTHONPATH, as TorchServe starts a worker):
    load `directory` as a worker would and time Service.predict."""
    os.chdir(directory)
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.model_loader import ModelLoaderFactory

    from bench.noop_handler import NoopHandler

    sink = logging.StreamHandler(open(os.devnull, "w"))  # like the worker's stdout: a line per record
    sink.setFormatter(logging.Formatter("%(message)s"))
    counter = CountMetricLines()
    sink.addFilter(counter)
    logging.basicConfig(handlers=[sink], level=logging.INFO)
    cache = MetricsCacheYamlImpl(config_file_path=str(directory / "metrics.yaml"))
    cache.initialize_cache()
    service = ModelLoaderFactory.get_model_loader().load(
        "sentiment", str(directory), "sentiment_handler.py", None, max(BATCH_SIZES), None, True, cache
    )
    service.set_cl_socket(None)
    handler = service._entry_point.__self__
    handler.backend = NoopHandler.NoModel(str(directory))
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    out = {}
    for size in BATCH_SIZES:
        batches = [
            [request(i + j, bodies[(i + j) % len(bodies)]) for j in range(size)] for i in range(0, REQUESTS, size)
        ]
        for batch in batches[:10]:  # warm
            service.predict(batch)
        counter.lines = 0
        started = time.process_time()
        for batch in batches:
            service.predict(batch)
        seconds = time.process_time() - started
        n = len(batches) * size
        out[str(size)] = {
            "cpu_us_per_request": round(seconds / n * 1e6, 1),
            "metric_lines_per_request": round(counter.lines / n, 2),
        }
    return out


def measure_revisions(revisions: list[str], model_dir: Path, texts: list[str], rounds: int = 3) -> dict:
    """{rev: {batch size: {"cpu_us_per_request", "metric_lines_per_request"}}}, the median of
    `rounds` alternating runs, each revision in a process of its own."""
    runs: dict[str, list[dict]] = {rev: [] for rev in revisions}
    with tempfile.TemporaryDirectory(prefix="handler-cost-") as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(texts))
        dirs = {rev: revision_dir(rev, model_dir, Path(tmp) / f"rev-{i}") for i, rev in enumerate(revisions)}
        for _ in range(rounds):
            for rev in revisions:
                done = subprocess.run(
                    [sys.executable, "-m", "bench.handler_cost", "--child", str(dirs[rev]), "--texts", str(texts_file)],
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join([str(dirs[rev]), str(ROOT)])},
                )
                runs[rev].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        rev: {
            size: {key: statistics.median(r[size][key] for r in results) for key in results[0][size]}
            for size in results[0]
        }
        for rev, results in runs.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rev", action="append", help="git revision (repeatable; WORKTREE: the files now)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--texts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        print(json.dumps(measure_one(args.child, json.loads(args.texts.read_text()))))
        return 0
    from common.paths import DEFAULT_MODEL_DIR
    from training.tweets import split_tweets

    texts = [t.text for t in split_tweets()[1]]
    print(json.dumps(measure_revisions(args.rev or ["WORKTREE"], DEFAULT_MODEL_DIR, texts, args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
