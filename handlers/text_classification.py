"""Plain functions behind the sentiment handler: options, batching, labels, outcomes.

Nothing here knows about TorchServe or torch (numpy only), so tests call it without a server. The
handler (`sentiment_handler.py`) only moves data between TorchServe and these functions;
a request's body is parsed by its protocol's module (protocols.py dispatches: native.py,
kserve_v1.py, oip_v2.py, over bodies.py's shared checks).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np

from bodies import Limits, ParsedRequest
from errors import (
    InternalServerError,
    RequestError,
)

QUANTIZE_CHOICES = ("none", "int8")
BACKEND_CHOICES = ("torch", "onnxruntime")
ARCHIVE_TIME_OPTIONS = ("backend", "quantize")


@dataclass(frozen=True)
class HandlerOptions:
    """The `handler:` section of model-config.yaml."""

    max_length: int = 128  # tokens; longer texts are truncated
    max_texts_per_request: int = Limits.max_texts_per_request
    max_text_chars: int = Limits.max_text_chars
    torch_threads: int = 0  # 0: all usable cores
    labels: tuple[str, ...] | None = None  # overrides the checkpoint's id2label
    backend: str = "torch"  # "onnxruntime": the ONNX graph exported at archive time
    quantize: str = "none"  # "int8": dynamic int8 quantization (CPU)
    half: bool = False  # fp16 weights and activations (torch on a GPU)
    micro_batch_size: int = 8  # texts per forward pass, sorted by length; 0: one pass per batch
    warmup_batches: int = 3  # forward passes at load, short to max_length, before the worker is ready
    # explanations (POST /explanations): the explainer (transformers, Captum, an fp32 PyTorch
    # copy of the weights) loads when the worker starts, before it is ready; false: none
    # loaded, an ONNX Runtime worker never imports transformers, explanations get 404
    explanations: bool = True
    explain_steps: int = 50  # integration steps of an explanation that names none
    explain_max_steps: int = 200  # the most a request may ask for (413 beyond)
    explain_max_texts: int = 4  # texts per explanation request (413 beyond)
    explain_max_tokens: int = 64  # tokens per text to explain, special tokens included (413 beyond)
    # a request that waited longer than this from the gateway to its batch gets a 503 Overloaded
    # (Retry-After: 1) instead of the model's time; 0: never (requests without the gateway's
    # sentiment-sent-at header, straight to TorchServe, are always run)
    queue_budget_ms: int = 0

    @classmethod
    def from_model_yaml(
        cls, model_yaml: dict[str, Any] | None, overrides: dict[str, Any] | None = None
    ) -> HandlerOptions:
        """The archive's `handler:` section, with `overrides` (a deployment's settings) over it.
        The backend and quantization are the archive's (an ONNX graph is exported for them)."""
        section = dict((model_yaml or {}).get("handler") or {})
        fixed = sorted(set(overrides or {}) & set(ARCHIVE_TIME_OPTIONS))
        if fixed:
            raise ValueError(
                f"handler option(s) {', '.join(fixed)} are set when the model is archived, not by a deployment"
            )
        section.update(overrides or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"unknown handler option(s) in model-config.yaml: {', '.join(unknown)}")
        if section.get("labels") is not None:
            section["labels"] = tuple(section["labels"])
        options = cls(**section)
        if not isinstance(options.explanations, bool):
            raise ValueError(f"handler option explanations must be true or false, not {options.explanations!r}")
        for name, choices in (("quantize", QUANTIZE_CHOICES), ("backend", BACKEND_CHOICES)):
            if getattr(options, name) not in choices:
                raise ValueError(
                    f"handler option {name} must be one of {', '.join(choices)}, not {getattr(options, name)!r}"
                )
        return options

    @property
    def limits(self) -> Limits:
        return Limits(self.max_texts_per_request, self.max_text_chars)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(options: HandlerOptions) -> int:
    return options.torch_threads if options.torch_threads > 0 else usable_cores()


@dataclass
class Batch:
    """The texts of one TorchServe batch, flattened, and where each request's slice lies."""

    texts: list[str] = field(default_factory=list)
    slices: list[slice | None] = field(default_factory=list)  # None: the request failed
    requests: list[ParsedRequest | RequestError] = field(default_factory=list)


def flatten(parsed: Sequence[ParsedRequest | RequestError]) -> Batch:
    batch = Batch()
    for item in parsed:
        batch.requests.append(item)
        if isinstance(item, RequestError):
            batch.slices.append(None)
            continue
        start = len(batch.texts)
        batch.texts.extend(item.texts)
        batch.slices.append(slice(start, len(batch.texts)))
    return batch


def micro_batches(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices of the texts grouped into forward passes of at most `size`, by token length.

    Padding every text of a batch to its longest one wastes compute (and attention grows
    with the square of the length); sorted groups pad each text only to a similar one.
    size 0 keeps the batch in one pass, in its original order.
    """
    order = list(range(len(lengths)))
    if size <= 0:
        return [order] if order else []
    order.sort(key=lambda i: lengths[i])
    return [order[start : start + size] for start in range(0, len(order), size)]


class TextTokenizer:
    """A checkpoint's fast tokenizer (its tokenizer.json) through the `tokenizers` library
    alone: what a transformers tokenizer gives for `tokenizer(texts, truncation=True,
    max_length=n)`, and its padding values, without importing transformers (a worker
    holds about 28 MiB less: bench/results/worker_memory.json). The handler's tokenizing
    and the benchmark's (bench/raw.py). Settings come from tokenizer_config.json as
    transformers reads them: the pad token, the pad token type, the padding and
    truncation sides, model_max_length."""

    def __init__(self, model_dir: str | os.PathLike[str]) -> None:
        from tokenizers import Tokenizer

        folder = os.fspath(model_dir)
        config_file = os.path.join(folder, "tokenizer_config.json")
        settings: dict[str, Any] = {}
        if os.path.isfile(config_file):
            with open(config_file) as f:
                settings = json.load(f)
        self.backend = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        self.backend.no_padding()  # `pad` pads each forward pass to its own longest
        self.truncation_side = str(settings.get("truncation_side", "right"))
        self.padding_left = settings.get("padding_side", "right") == "left"
        pad_token = settings.get("pad_token")
        if isinstance(pad_token, dict):  # an AddedToken written out in full
            pad_token = pad_token.get("content")
        pad_id = self.backend.token_to_id(pad_token) if isinstance(pad_token, str) else None
        self.pad_values = {"input_ids": pad_id or 0, "token_type_ids": int(settings.get("pad_token_type_id", 0))}
        limit = settings.get("model_max_length")
        self.model_max_length = limit if isinstance(limit, int) else None
        self.truncated_at: int | None = None

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[dict[str, list[int]]]:
        """Each text's tokens (input_ids, token_type_ids, attention_mask), special tokens
        added, truncated to `max_length`, unpadded. A backend passes on the inputs its
        model takes."""
        if self.truncated_at != max_length:
            self.backend.enable_truncation(max_length, direction=self.truncation_side)
            self.truncated_at = max_length
        return [
            {"input_ids": e.ids, "token_type_ids": e.type_ids, "attention_mask": e.attention_mask}
            for e in self.backend.encode_batch(list(texts))
        ]


def pad(
    features: Sequence[Mapping[str, Sequence[int]]], pad_values: dict[str, int], left: bool = False
) -> dict[str, np.ndarray]:
    """The tokenized texts of one forward pass as int64 arrays [texts, longest text]: each
    key padded with its value in `pad_values` (0 where absent), on the right or the left.
    What the tokenizer's own `pad` does for these keys, at a fraction of its cost per call
    (bench/handler_cost.py)."""
    longest = max(len(f["input_ids"]) for f in features)
    arrays = {}
    for key in features[0]:
        array = np.full((len(features), longest), pad_values.get(key, 0), dtype=np.int64)
        for row, feature in enumerate(features):
            values = feature[key]
            start = longest - len(values) if left else 0
            array[row, start : start + len(values)] = values
        arrays[key] = array
    return arrays


def label_names(id2label: dict[str, Any] | None, num_labels: int, override: Iterable[str] | None = None) -> list[str]:
    """Label names by class index: an explicit override, else the checkpoint's id2label."""
    if override is not None:
        names = [str(n) for n in override]
        if len(names) != num_labels:
            raise ValueError(f"labels option has {len(names)} names; the model has {num_labels} classes")
        return names
    mapping = {int(k): str(v) for k, v in (id2label or {}).items()}
    return [mapping.get(i, f"LABEL_{i}") for i in range(num_labels)]


def prediction(probabilities: Sequence[float], labels: Sequence[str]) -> dict[str, Any]:
    best = max(range(len(labels)), key=lambda i: probabilities[i])
    return {
        "label": labels[best],
        "score": round(float(probabilities[best]), 6),
        "scores": {name: round(float(p), 6) for name, p in zip(labels, probabilities, strict=True)},
    }


def internal_error(step: str) -> RequestError:
    """The answer to a request that hit a bug in the service rather than a fault of its own."""
    return InternalServerError(f"the service failed while {step} this request")


@dataclass
class Tally:
    """What answering requests of a batch adds to the handler metrics (metrics.yaml,
    docs/metrics.md). A batch is answered in one attempt, or, when that fails, request by
    request (`run_isolated`): each attempt counts into a tally of its own, and the handler
    emits once per batch the counts of the attempts whose answers were sent (a failed
    attempt's requests are answered, and counted, by their retries) and the seconds of
    every attempt (time the worker spent on the batch). Kept here rather than in
    sentiment_handler.py: TorchServe loads a handler module only if it defines one class."""

    texts: int = 0  # texts of the requests answered with predictions
    errors: list[str] = field(default_factory=list)  # the error type of each request answered with an error
    explain_seconds: list[float] = field(default_factory=list)  # per explanation answered
    preprocess_seconds: float | None = None
    inference_seconds: float | None = None

    def add_seconds(self, other: Tally) -> None:
        for name in ("preprocess_seconds", "inference_seconds"):
            if getattr(other, name) is not None:
                setattr(self, name, (getattr(self, name) or 0.0) + getattr(other, name))

    def add(self, other: Tally) -> None:
        self.texts += other.texts
        self.errors += other.errors
        self.explain_seconds += other.explain_seconds
        self.add_seconds(other)


Item = TypeVar("Item")
Result = TypeVar("Result")


def run_isolated(items: Sequence[Item], run: Callable[[Sequence[Item]], Sequence[Result]]) -> list[Result | Exception]:
    """`run(items)` as one call, its results in order; if that raises, each item alone.

    This is how one request's bytes are kept from failing the requests batched with it:
    a step that fails for the group is retried item by item, and an item that still
    fails gets its exception as its result, the others their results.
    """
    try:
        results: list[Result | Exception] = list(run(items))
        if len(results) != len(items):
            raise RuntimeError(f"{len(results)} results for {len(items)} items")
        return results
    except Exception as e:
        if len(items) == 1:
            return [e]
    out: list[Result | Exception] = []
    for item in items:
        try:
            (result,) = run([item])
            out.append(result)
        except Exception as e:  # each item fails alone
            out.append(e)
    return out


def outcomes(
    batch: Batch, probabilities: Sequence[Sequence[float] | RequestError], labels: Sequence[str]
) -> list[list[dict[str, Any]] | RequestError]:
    """Per request of the batch, in order: the predictions of its texts, or its error.

    `probabilities` has one entry per text of the batch: its class probabilities, or the
    RequestError of a step that failed for that text (which then answers its request).
    """
    out: list[list[dict[str, Any]] | RequestError] = []
    for item, where in zip(batch.requests, batch.slices, strict=True):
        if isinstance(item, RequestError):
            out.append(item)
            continue
        assert where is not None  # a request that parsed has its texts' slice
        mine = probabilities[where]
        failed = next((p for p in mine if isinstance(p, RequestError)), None)
        if failed is not None:
            out.append(failed)
            continue
        results = [prediction(p, labels) for p in mine if not isinstance(p, RequestError)]
        if any(not all(math.isfinite(v) for v in r["scores"].values()) for r in results):
            out.append(InternalServerError("the model returned non-finite scores"))
            continue
        out.append(results)
    return out
