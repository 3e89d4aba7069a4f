"""LitServe 0.2.19 serving the same model, the peer in the benchmark.

    python -m bench.litserve_app --model DIR --port 8000 [--batch 16] [--timeout-ms 10]
                                 [--workers 1] [--threads 2]

The same request and answer as this project's API ({"text": "..."} -> label, score,
scores), the same tokenizer, max_length and PyTorch model, with LitServe's own dynamic
batching (max_batch_size, batch_timeout) and its worker processes.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import litserve as ls


class SentimentAPI(ls.LitAPI):
    def __init__(self, model_dir: str, threads: int, max_length: int, **kwargs):
        super().__init__(**kwargs)
        self.model_dir, self.threads, self.max_length = model_dir, threads, max_length

    def setup(self, device):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.set_num_threads(self.threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.model_dir).eval()
        config = self.model.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]

    def decode_request(self, request):
        return request["text"]

    def batch(self, inputs):
        return list(inputs)

    def predict(self, texts):
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with self.torch.inference_mode():
            return self.torch.softmax(self.model(**enc).logits, dim=-1).tolist()

    def unbatch(self, output):
        return list(output)

    def encode_response(self, probs):
        best = max(range(len(self.labels)), key=probs.__getitem__)
        return {"label": self.labels[best], "score": probs[best], "scores": dict(zip(self.labels, probs, strict=True))}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.litserve_app", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--timeout-ms", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--max-length", type=int, default=128)
    args = p.parse_args()
    api = SentimentAPI(
        args.model,
        args.threads,
        args.max_length,
        max_batch_size=args.batch,
        batch_timeout=args.timeout_ms / 1000,
        api_path="/predict",
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, timeout=60)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
