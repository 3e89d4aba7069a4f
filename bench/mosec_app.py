"""mosec 0.9.8 serving the shipped int8 graph, a peer in the benchmark (bench/peers.py).

    python -m bench.mosec_app --model DIR --port 8000 [--batch 16] [--wait-ms 2]
                              [--workers 2] [--threads 1] [--max-length 128]

mosec's Rust front takes the HTTP requests and batches them dynamically (max_batch_size,
max_wait_time) for Python worker processes. Each worker runs the very graph the shipped
archive serves through the handler's own backend, tokenizer and micro-batching code
(bench/shipped_graph.py; handlers/ on PYTHONPATH): like for like, only the server differs.
POST /inference with {"text": "..."} answers label, score, scores, as this project does.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mosec import Server, Worker
from mosec.errors import ValidationError

from bench.shipped_graph import ShippedGraph, answer

# the workers are spawned processes: they read their settings from the environment
SETTINGS = "BENCH_MOSEC_SETTINGS"


class Sentiment(Worker):
    def __init__(self) -> None:
        super().__init__()
        settings = json.loads(os.environ[SETTINGS])
        self.graph = ShippedGraph(settings["model"], settings["threads"], settings["max_length"])

    def deserialize(self, data: bytes) -> str:
        try:
            text = json.loads(data)["text"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValidationError(f"expected {{'text': '...'}}: {e}") from e
        if not isinstance(text, str):
            raise ValidationError("text must be a string")
        return text

    def forward(self, texts: list[str]) -> list[dict]:
        return [answer(self.graph.labels, p) for p in self.graph.probabilities(texts)]

    def serialize(self, data: dict) -> bytes:
        return json.dumps(data).encode()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.mosec_app", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)  # read by mosec too
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--wait-ms", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-length", type=int, default=128)
    args, _ = p.parse_known_args()  # mosec parses the command line itself: --port, --address, ...
    os.environ[SETTINGS] = json.dumps({"model": args.model, "threads": args.threads, "max_length": args.max_length})
    server = Server()
    server.append_worker(Sentiment, num=args.workers, max_batch_size=args.batch, max_wait_time=args.wait_ms)
    server.run()


if __name__ == "__main__":
    main()
