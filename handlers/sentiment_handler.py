"""TorchServe handler for any Hugging Face sequence-classification checkpoint folder.

The archive holds the checkpoint (config.json, weights, tokenizer files) at its top
level next to this file. Options come from the `handler:` section of the archive's
model-config.yaml (see HandlerOptions). Parsing, batching and label mapping live in
`text_classification`; this class only moves data between TorchServe and those functions
and runs the model.
"""

from __future__ import annotations

import logging
import os
import time
import warnings

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from text_classification import (
    HandlerOptions,
    RequestError,
    flatten,
    label_names,
    micro_batches,
    parse_request,
    responses,
    threads_per_worker,
)

logger = logging.getLogger(__name__)


def quantize_int8(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Dynamic int8 quantization of the Linear layers: int8 weights, activations quantized
    on the fly. CPU only; about 2.5x faster for this model with no measurable accuracy loss."""
    if device.type != "cpu":
        raise ValueError("handler option quantize: int8 runs on the CPU only; use none on a GPU")
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao.quantization and its quantized tensors are deprecated in favour of
        # torchao, but they are what torch 2.13 ships; keep the worker log readable.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class SentimentHandler(BaseHandler):
    def initialize(self, context):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        started = time.time()
        self.context = context
        properties = context.system_properties
        model_dir = properties.get("model_dir")
        model_yaml = getattr(context, "model_yaml_config", None) or {}
        self.options = HandlerOptions.from_model_yaml(model_yaml)

        gpu_id = properties.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(threads_per_worker(self.options))

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        self.model.to(self.device).eval()
        if self.options.quantize == "int8":
            self.model = quantize_int8(self.model, self.device)
        self.labels = label_names(
            self.model.config.id2label, self.model.config.num_labels, self.options.labels
        )
        self.max_length = min(self.options.max_length, self._model_max_length())
        self.initialized = True
        logger.info(
            "loaded %s (%s, %d labels: %s, quantize=%s) on %s with %d torch threads, "
            "max_length %d, in %.1fs",
            context.model_name,
            type(self.model).__name__,
            len(self.labels),
            ", ".join(self.labels),
            self.options.quantize,
            self.device,
            torch.get_num_threads(),
            self.max_length,
            time.time() - started,
        )

    def _model_max_length(self) -> int:
        positions = getattr(self.model.config, "max_position_embeddings", None)
        limits = [n for n in (positions, self.tokenizer.model_max_length) if isinstance(n, int)]
        return min(limits) if limits else self.options.max_length

    def _content_type(self, idx: int) -> str | None:
        # Request headers include Authorization: never log them.
        for name, value in self.context.get_all_request_header(idx).items():
            if name.lower() == "content-type" and isinstance(value, str):
                return value
        return None

    def _emit(self, name: str, value: float, metric_type: MetricTypes, **extra_dims) -> None:
        """Record a handler metric (declared in metrics.yaml) through TorchServe's metrics API."""
        dims = [Dimension("ModelName", self.context.model_name), Dimension("Level", "Model")]
        dims += [Dimension(k, v) for k, v in extra_dims.items()]
        self.context.metrics.add_metric(name, value, "", dimensions=dims, metric_type=metric_type)

    def preprocess(self, data):
        started = time.perf_counter()
        parsed = []
        for idx, row in enumerate(data):
            try:
                request = parse_request(row, self.options.limits, self._content_type(idx))
                self._emit("SentimentTextsPerRequest", len(request.texts), MetricTypes.HISTOGRAM)
            except RequestError as e:
                logger.info("request %d of the batch refused: %s (%d)", idx, e.kind, e.status)
                self._emit("SentimentRequestErrors", 1, MetricTypes.COUNTER, ErrorType=e.kind)
                request = e
            parsed.append(request)
        batch = flatten(parsed)
        self._emit("SentimentBatchSize", len(data), MetricTypes.HISTOGRAM)
        self._emit("SentimentTexts", len(batch.texts), MetricTypes.COUNTER)
        chunks = []
        if batch.texts:
            # Tokenize the whole batch at once, then pad each length-sorted micro-batch
            # only to its own longest text.
            encoded = self.tokenizer(batch.texts, truncation=True, max_length=self.max_length)
            lengths = [len(ids) for ids in encoded["input_ids"]]
            for indices in micro_batches(lengths, self.options.micro_batch_size):
                features = {key: [encoded[key][i] for i in indices] for key in encoded.keys()}
                tensors = self.tokenizer.pad(features, return_tensors="pt").to(self.device)
                chunks.append((indices, tensors))
        self._emit("SentimentPreprocessSeconds", time.perf_counter() - started, MetricTypes.HISTOGRAM)
        return batch, chunks

    def inference(self, data, *args, **kwargs):
        batch, chunks = data
        if not chunks:
            return batch, []
        started = time.perf_counter()
        probabilities: list = [None] * len(batch.texts)
        with torch.inference_mode():
            for indices, tensors in chunks:
                logits = self.model(**tensors).logits
                for i, p in zip(indices, torch.softmax(logits.float(), dim=-1).cpu().tolist()):
                    probabilities[i] = p
        if self.options.simulated_latency_ms:
            time.sleep(self.options.simulated_latency_ms / 1000)
        self._emit("SentimentInferenceSeconds", time.perf_counter() - started, MetricTypes.HISTOGRAM)
        return batch, probabilities

    def postprocess(self, data):
        batch, probabilities = data
        out = []
        for idx, (status, body) in enumerate(responses(batch, probabilities, self.labels)):
            self.context.set_response_content_type(idx, "application/json")
            if status != 200:
                self.context.set_response_status(status, "", idx)
            out.append(body)
        return out
