"""The raw limit: the served model called in-process, no server, on the same texts.

    PYTHONPATH=handlers python -m bench.raw --model DIR --texts FILE.json [--backend onnxruntime]
                                            [--quantize int8] [--threads 2]

The model runs through the handler's own backend code (handlers/backends.py): PyTorch, or
ONNX Runtime on the model.onnx in DIR (exported by handlers/export_onnx.py). Per batch
size, two ways: "plain" (tokenize the batch with padding to its longest text,
one forward pass) and "micro" (what the handler does: tokenize once, sort by length,
forward passes of at most micro_batch_size texts each padded to its own longest), in a
loop over the texts for a fixed time. Prints JSON: sentences/s and batch latency per
batch size. Runs in a process of its own so that the load generator's process never
imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common.paths import MODEL_CONFIG


def main() -> int:
    import yaml

    from backends import load
    from text_classification import HandlerOptions, TextTokenizer, micro_batches, pad

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--texts", type=Path, required=True, help="JSON list of texts")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch")
    parser.add_argument("--quantize", choices=("none", "int8"), default="none")
    parser.add_argument("--micro-batch-size", type=int, help="the handler's (default: model-config.yaml's)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--ways", default="plain,micro")
    args = parser.parse_args()

    handler_options = yaml.safe_load(MODEL_CONFIG.read_text())["handler"]
    max_length = handler_options["max_length"]
    micro_size = args.micro_batch_size if args.micro_batch_size is not None else handler_options["micro_batch_size"]
    texts = json.loads(args.texts.read_text())
    tokenizer = TextTokenizer(args.model)
    options = HandlerOptions(backend=args.backend, quantize=args.quantize, torch_threads=args.threads)
    backend = load(str(args.model), options, None, False, args.threads)

    values = tokenizer.pad_values

    def features(batch: list[str]) -> list[dict[str, list[int]]]:
        return tokenizer.tokenize(batch, max_length)  # the handler's own tokenizing

    def plain(batch: list[str]) -> None:
        backend.probabilities(pad(features(batch), values))

    def micro(batch: list[str]) -> None:
        texts = features(batch)
        for indices in micro_batches([len(t["input_ids"]) for t in texts], micro_size):
            backend.probabilities(pad([texts[i] for i in indices], values))

    ways = {"plain": plain, "micro": micro}
    ways = {name: ways[name] for name in args.ways.split(",")}
    results = {name: [] for name in ways}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        batches = [texts[i : i + batch_size] for i in range(0, len(texts) - batch_size + 1, batch_size)]
        for way, run_batch in ways.items():
            for batch in batches[:3]:  # warm-up
                run_batch(batch)
            latencies, sentences = [], 0
            started = time.perf_counter()
            i = 0
            while time.perf_counter() - started < args.duration:
                t0 = time.perf_counter()
                run_batch(batches[i % len(batches)])
                latencies.append(time.perf_counter() - t0)
                sentences += batch_size
                i += 1
            elapsed = time.perf_counter() - started
            results[way].append(
                {
                    "batch_size": batch_size,
                    "sentences_per_s": sentences / elapsed,
                    "batch_p50_ms": statistics.median(latencies) * 1000,
                    "batches": len(latencies),
                }
            )
            print(
                f"raw {args.backend} {args.quantize} {way} batch {batch_size}: {sentences / elapsed:.1f} sentences/s, "
                f"p50 {statistics.median(latencies) * 1000:.1f} ms",
                file=sys.stderr,
            )
    json.dump(
        {
            "backend": args.backend,
            "quantize": args.quantize,
            "threads": args.threads,
            "max_length": max_length,
            "micro_batch_size": micro_size,
            "results": results,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
