"""LitServe 0.2.19 serving the same model, the peer in the benchmark.

    python -m bench.litserve_app --model DIR --port 8000 [--batch 16] [--timeout-ms 10]
                                 [--workers 1] [--threads 2] [--onnx]

The same request and answer as this project's API ({"text": "..."} -> label, score,
scores), the same tokenizer and max_length, with LitServe's own dynamic batching
(max_batch_size, batch_timeout) and its worker processes. The model: PyTorch fp32 from
DIR; or, with --onnx, the very graph the shipped archive serves (DIR/model.onnx, int8,
exported by handlers/export_onnx.py) run by the handler's own backend, tokenizer and
micro-batching code (handlers/backends.py, text_classification.py; handlers/ on
PYTHONPATH), the shipped micro_batch_size included: like for like, only the server differs.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import litserve as ls

from bench.shipped_graph import answer


class SentimentAPI(ls.LitAPI):
    def __init__(self, model_dir: str, threads: int, max_length: int, onnx: bool, **kwargs):
        super().__init__(**kwargs)
        self.model_dir, self.threads, self.max_length, self.onnx = model_dir, threads, max_length, onnx

    def setup(self, device):
        if self.onnx:
            self.setup_onnx()
            return
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.set_num_threads(self.threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.model_dir).eval()
        config = self.model.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]

    def setup_onnx(self):
        from bench.shipped_graph import ShippedGraph

        self.graph = ShippedGraph(self.model_dir, self.threads, self.max_length)
        self.labels = self.graph.labels

    def decode_request(self, request):
        return request["text"]

    def batch(self, inputs):
        return list(inputs)

    def predict(self, texts):
        if self.onnx:
            return self.graph.probabilities(texts)
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with self.torch.inference_mode():
            return self.torch.softmax(self.model(**enc).logits, dim=-1).tolist()

    def unbatch(self, output):
        return list(output)

    def encode_response(self, probs):
        return answer(self.labels, probs)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.litserve_app", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--timeout-ms", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--onnx", action="store_true", help="DIR/model.onnx through the handler's backend code")
    args = p.parse_args()
    api = SentimentAPI(
        args.model,
        args.threads,
        args.max_length,
        args.onnx,
        max_batch_size=args.batch,
        batch_timeout=args.timeout_ms / 1000,
        api_path="/predict",
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, timeout=60)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
