"""The raw limit: the served model called in-process, no server, on the same texts.

    python -m bench.raw --model DIR --texts FILE.json [--quantize int8] [--threads 2]

Per batch size, two ways: "plain" (tokenize the batch with padding to its longest text,
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

from server.paths import MODEL_CONFIG  # noqa: E402


def main() -> int:
    import torch
    import yaml
    from sentiment_handler import quantize_int8
    from text_classification import micro_batches
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--texts", type=Path, required=True, help="JSON list of texts")
    parser.add_argument("--quantize", choices=("none", "int8"), default="none")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--ways", default="plain,micro")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    handler_options = yaml.safe_load(MODEL_CONFIG.read_text())["handler"]
    max_length = handler_options["max_length"]
    micro_size = handler_options["micro_batch_size"]
    texts = json.loads(args.texts.read_text())
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    if args.quantize == "int8":
        model = quantize_int8(model, torch.device("cpu"))

    def plain(batch: list[str]) -> None:
        enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            torch.softmax(model(**enc).logits.float(), dim=-1).tolist()

    def micro(batch: list[str]) -> None:
        enc = tokenizer(batch, truncation=True, max_length=max_length)
        lengths = [len(ids) for ids in enc["input_ids"]]
        with torch.inference_mode():
            for indices in micro_batches(lengths, micro_size):
                features = {key: [enc[key][i] for i in indices] for key in enc.keys()}
                tensors = tokenizer.pad(features, return_tensors="pt")
                torch.softmax(model(**tensors).logits.float(), dim=-1).tolist()

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
            results[way].append({
                "batch_size": batch_size,
                "sentences_per_s": sentences / elapsed,
                "batch_p50_ms": statistics.median(latencies) * 1000,
                "batches": len(latencies),
            })
            print(f"raw {args.quantize} {way} batch {batch_size}: {sentences / elapsed:.1f} sentences/s, "
                  f"p50 {statistics.median(latencies) * 1000:.1f} ms", file=sys.stderr)
    json.dump({"quantize": args.quantize, "threads": args.threads, "max_length": max_length,
               "micro_batch_size": micro_size, "results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
