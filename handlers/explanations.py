"""Word attributions for a prediction: Layer Integrated Gradients on the input embeddings
(Captum), word pieces merged back into the words of the original text.

`POST /explanations/<model>` takes the bodies predictions take (text/plain, {"text": str},
{"text": [...]}), and a JSON object may also say how many integration steps it wants
({"text": "...", "steps": 20}). Each text is answered with its prediction, the one
`/predictions` gives (label, score and scores of the model served, whatever its backend),
and, per word of the text, its attribution toward that label, with character offsets.

Attributions need gradients, so they are computed on the PyTorch fp32 model of the
archive's weights (the served model itself when it is that; else a copy), always toward
the served label, even on the rare text where the fp32 copy would pick another one. The
explainer (Captum, transformers' tokenizer, the copy) loads when the worker starts, in
the handler's initialize(), before TorchServe sends the worker a request: loading it
inside a batch would hold up that batch's predictions for seconds (`explainer_for`). They add up to the fp32 copy's
probability of that label for the text (`target_score`) minus its probability for the
baseline (the same text with every word token replaced by the padding token), up to the
integral's error, which is reported as `convergence_delta`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from bodies import Limits, ParsedRequest, json_type
from errors import InvalidInput, TooManySteps, TooManyTexts, TooManyTokens
from native import parse_with_extras
from text_classification import HandlerOptions

METHOD = "layer integrated gradients on the input embeddings"


@dataclass(frozen=True)
class ExplainLimits:
    """HandlerOptions' explain_* settings (their defaults there)."""

    steps: int  # integration steps when a request names none
    max_steps: int
    max_texts: int  # texts per request
    max_tokens: int  # tokens per text, its special tokens included


def parse_explanation(
    row: dict[str, Any], limits: Limits, explain: ExplainLimits, content_type: str | None
) -> tuple[ParsedRequest, int]:
    """An explanation request -> its texts and integration steps, or RequestError."""
    request, extras = parse_with_extras(row, limits, content_type, ("steps",))
    steps = extras.get("steps", explain.steps)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise InvalidInput(f'"steps" must be an integer of 2 or more, not {json_type(steps)}')
    if steps > explain.max_steps:
        raise TooManySteps(f'"steps" is {steps}; the limit is {explain.max_steps}')
    if len(request.texts) > explain.max_texts:
        raise TooManyTexts(f"{len(request.texts)} texts to explain; the limit is {explain.max_texts} per request")
    return request, steps


def merge_word_pieces(
    text: str, offsets: Sequence[tuple[int, int]], word_ids: Sequence[int | None], token_attributions: Sequence[float]
) -> list[dict[str, Any]]:
    """Token attributions -> one entry per word of `text`: the word as written, its
    character span, the sum of its pieces' attributions. Special tokens (no word) drop out."""
    words: dict[int, dict[str, Any]] = {}
    for (start, end), word, value in zip(offsets, word_ids, token_attributions, strict=True):
        if word is None:
            continue
        entry = words.setdefault(word, {"start": start, "end": end, "attribution": 0.0})
        entry["start"], entry["end"] = min(entry["start"], start), max(entry["end"], end)
        entry["attribution"] += float(value)
    return [
        {
            "word": text[w["start"] : w["end"]],
            "start": w["start"],
            "end": w["end"],
            "attribution": round(w["attribution"], 6),
        }
        for _, w in sorted(words.items())
    ]


class Explainer:
    """Layer Integrated Gradients over a PyTorch sequence classifier's input embeddings."""

    def __init__(self, model: Any, tokenizer: Any, labels: Sequence[str], threads: int, source: str = "") -> None:
        import torch
        from captum.attr import LayerIntegratedGradients

        self.source = source  # what `model` is, for the worker's log
        self.torch = torch
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.threads = threads

        def probability(input_ids: Any, attention_mask: Any, target: int) -> Any:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return torch.softmax(logits, dim=-1)[:, target]

        self.probability = probability
        self.lig = LayerIntegratedGradients(probability, self.model.get_input_embeddings())

    @classmethod
    def from_checkpoint(cls, model_dir: str, labels: Sequence[str], threads: int, model: Any = None) -> Explainer:
        """On the checkpoint's PyTorch model (loaded here unless `model` is it already) and
        its transformers tokenizer, which gives the offsets and word ids the words need.
        Imports transformers: a worker with `explanations: false` never calls this."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        source = "the served model"
        if model is None:
            model = AutoModelForSequenceClassification.from_pretrained(model_dir)
            source = "an fp32 copy of the archive's weights"
        return cls(model, AutoTokenizer.from_pretrained(model_dir), labels, threads, source)

    def explain(
        self, text: str, steps: int, max_tokens: int, served: Callable[[str], Sequence[float]]
    ) -> dict[str, Any]:
        """`text`'s prediction by `served` (the served model's class probabilities) and its
        words' attributions toward that prediction's label."""
        torch = self.torch
        encoded = self.tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
        n_tokens = encoded["input_ids"].shape[1]
        if n_tokens > max_tokens:
            raise TooManyTokens(f"a text to explain has {n_tokens} tokens; the limit is {max_tokens}")
        input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
        special = torch.tensor(
            self.tokenizer.get_special_tokens_mask(input_ids[0].tolist(), already_has_special_tokens=True)
        ).bool()
        baseline = torch.where(special, input_ids[0], torch.tensor(self.tokenizer.pad_token_id)).unsqueeze(0)
        torch.set_num_threads(self.threads)
        probabilities = list(served(text))
        target = max(range(len(probabilities)), key=probabilities.__getitem__)
        with torch.no_grad():
            target_score = float(self.probability(input_ids, attention_mask, target)[0])
            baseline_score = float(self.probability(baseline, attention_mask, target)[0])
        attributions, delta = self.lig.attribute(
            input_ids,
            baselines=baseline,
            additional_forward_args=(attention_mask, target),
            n_steps=steps,
            internal_batch_size=min(steps, 32),
            return_convergence_delta=True,
        )
        per_token = attributions.sum(dim=-1)[0].tolist()
        convergence_delta = round(float(delta[0]), 6)
        del attributions, delta
        release_freed_heap()
        scores = {name: round(float(p), 6) for name, p in zip(self.labels, probabilities, strict=True)}
        return {
            "label": self.labels[target],
            "score": scores[self.labels[target]],
            "scores": scores,
            "explanation": {
                "target": self.labels[target],
                "method": METHOD,
                "steps": steps,
                "target_score": round(target_score, 6),
                "baseline_score": round(baseline_score, 6),
                "convergence_delta": convergence_delta,
                "words": merge_word_pieces(text, encoded["offset_mapping"][0].tolist(), encoded.word_ids(0), per_token),
            },
        }


@cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim from the C library the process already has, or None where that
    library has none (musl, macOS)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_freed_heap() -> None:
    """Give back to the system the heap an explanation's autograd buffers used and freed.
    glibc keeps freed memory for the process's later allocations, so without this a worker
    that explained once went on holding those pages (hundreds of MiB after one at
    explain_max_tokens), which predictions never need: bench/results/README.md, a worker's
    memory. It takes milliseconds beside an explanation's hundreds."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def explainer_for(
    backend: Any, options: HandlerOptions, model_dir: str, labels: Sequence[str], threads: int
) -> Explainer:
    """The explainer of a worker serving `backend`: on the served model itself when it is
    PyTorch fp32 (no second copy), else on an fp32 copy of the archive's weights. The
    handler calls it in initialize() (and bench/worker_memory.py as the handler does)."""
    model = getattr(backend, "model", None)
    reuse = options.backend == "torch" and options.quantize == "none" and not options.half
    return Explainer.from_checkpoint(model_dir, labels, threads, model if reuse and model is not None else None)
