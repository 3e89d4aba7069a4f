"""The shipped int8 graph as the peers run it (bench/litserve_app.py, bench/mosec_app.py):
the handler's own backend, tokenizer and micro-batching code (handlers/ on PYTHONPATH),
with the shipped handler options, so that only the server around it differs.

DIR holds the checkpoint's tokenizer and config and the graph handlers/export_onnx.py
wrote (DIR/model.onnx), as bench/run.py's raw_model_dir makes it.
"""

from __future__ import annotations

from typing import Any

import yaml

from common.paths import MODEL_CONFIG


class ShippedGraph:
    def __init__(self, model_dir: str, threads: int, max_length: int) -> None:
        import backends
        import text_classification as tc

        shipped = yaml.safe_load(MODEL_CONFIG.read_text())["handler"]
        options = tc.HandlerOptions(backend="onnxruntime", quantize=shipped["quantize"], torch_threads=threads)
        self.backend = backends.load(model_dir, options, None, False, threads)
        self.tokenizer = tc.TextTokenizer(model_dir)
        self.tc, self.micro_batch_size, self.max_length = tc, shipped["micro_batch_size"], max_length
        self.labels = tc.label_names(self.backend.config.id2label, self.backend.config.num_labels)

    def probabilities(self, texts: list[str]) -> list[Any]:
        """What the handler's inference does: tokenize, length-sorted micro-batches, padded."""
        tc, tokenizer = self.tc, self.tokenizer
        encodings = tokenizer.tokenize(texts, self.max_length)
        out: list[Any] = [None] * len(texts)
        for group in tc.micro_batches([len(e["input_ids"]) for e in encodings], self.micro_batch_size):
            batch = tc.pad([encodings[i] for i in group], tokenizer.pad_values, tokenizer.padding_left)
            for i, probabilities in zip(group, self.backend.probabilities(batch), strict=True):
                out[i] = probabilities
        return out


def answer(labels: list[str], probs) -> dict:
    """The project's answer to one text: label, score, scores."""
    best = max(range(len(labels)), key=probs.__getitem__)
    scores = dict(zip(labels, map(float, probs), strict=True))
    return {"label": labels[best], "score": scores[labels[best]], "scores": scores}
