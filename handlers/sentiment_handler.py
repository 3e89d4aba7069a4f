"""TorchServe handler for any Hugging Face sequence-classification checkpoint folder.

The archive holds the checkpoint (config.json, weights, tokenizer files) at its top
level next to this file. Options come from the `handler:` section of the archive's
model-config.yaml (see HandlerOptions). Parsing, batching and label mapping live in
`text_classification`; this class only moves data between TorchServe and those functions
and runs the model.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import traceback
from collections.abc import Sequence
from typing import Any

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

import backends
from bodies import ParsedRequest
from contract import (
    EXPLAIN_HEADER,
    PROTOCOL_HEADER,
    REQUEST_ID_HEADER,
    REQUEST_ID_PARAM,
    REQUEST_ID_PATTERN,
    SENT_AT_HEADER,
)
from errors import ExplanationsDisabled, Overloaded, RequestError
from explanations import Explainer, ExplainLimits, explainer_for, parse_explanation
from protocols import Envelope, Model, parse, protocol_of, render
from stages import Context, Encoding, Inferred, Preprocessed
from text_classification import (
    HandlerOptions,
    Tally,
    TextTokenizer,
    flatten,
    internal_error,
    label_names,
    micro_batches,
    outcomes,
    pad,
    run_isolated,
    threads_per_worker,
)

logger = logging.getLogger(__name__)
REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
NO_REQUEST_ID = "-"  # in log lines, for a request that came without one (straight to TorchServe)


OVERRIDES_ENV = "SENTIMENT_HANDLER_OPTIONS"


def deployment_overrides() -> dict[str, Any]:
    """Handler options a deployment sets without rebuilding the archive: a YAML mapping in
    the file that $SENTIMENT_HANDLER_OPTIONS names (a Kubernetes ConfigMap, say)."""
    path = os.environ.get(OVERRIDES_ENV)
    if not path:
        return {}
    import yaml

    with open(path) as f:
        overrides = yaml.safe_load(f) or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"{OVERRIDES_ENV}: {path} must hold a mapping of handler options")
    return overrides


class SentimentHandler(BaseHandler):
    # TorchServe's context: set by initialize, then by handle for each batch, whose request
    # headers and response settings it holds (the methods below answer that batch)
    context: Context
    explainer: Explainer | None

    def initialize(self, context: Context) -> None:
        import torch

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        started = time.time()
        self.context = context
        properties = context.system_properties
        model_dir: str = properties["model_dir"]
        model_yaml = getattr(context, "model_yaml_config", None) or {}
        self.options = HandlerOptions.from_model_yaml(model_yaml, deployment_overrides())
        self.model_dir = model_dir
        self.explainer = None
        self.explain_limits = ExplainLimits(
            self.options.explain_steps,
            self.options.explain_max_steps,
            self.options.explain_max_texts,
            self.options.explain_max_tokens,
        )
        self.backend = self._load_backend(model_dir, properties.get("gpu_id"), torch.cuda.is_available())
        self.device = self.backend.device
        self.tokenizer = TextTokenizer(model_dir)
        config = self.backend.config
        self.labels = label_names(config.id2label, config.num_labels, self.options.labels)
        self.max_length = min(self.options.max_length, self._model_max_length(config))
        manifest = getattr(context, "manifest", None) or {}
        self.served_model = Model(context.model_name, manifest.get("model", {}).get("modelVersion"))
        self.dimensions = [Dimension("ModelName", context.model_name), Dimension("Level", "Model")]
        loaded = time.time()
        self._warm_up()
        warmed = time.time()
        self._load_explainer()
        self.initialized = True
        logger.info(
            "loaded %s (%s backend, %d labels: %s, quantize=%s, half=%s) on %s with %d threads, "
            "max_length %d, in %.1fs, warmed up in %.1fs, explanations %s",
            context.model_name,
            self.options.backend,
            len(self.labels),
            ", ".join(self.labels),
            self.options.quantize,
            self.options.half,
            self.device,
            self.backend.threads,
            self.max_length,
            loaded - started,
            warmed - loaded,
            "on" if self.explainer is not None else "off",
        )

    def _load_explainer(self) -> None:
        """The explainer, loaded here in initialize() (unless the handler option explanations
        is false): TorchServe marks a worker ready, and sends it requests, only once
        initialize() has returned, so no batch waits for transformers, Captum and the fp32
        copy to load (seconds), as the predictions batched with a worker's first explanation
        did when it loaded there. A background thread would leave the worker ready sooner but
        slow its predictions while it imports (the GIL), and an explanation meanwhile would
        have to wait inside its batch. A failure here fails the worker's start, as a broken
        archive should; `explanations: false` is the way to serve without the explainer."""
        if not self.options.explanations:
            return
        started = time.time()
        self.explainer = explainer_for(
            self.backend, self.options, self.model_dir, self.labels, threads_per_worker(self.options)
        )
        # tests/integration/test_explanation_warmup.py reads this line in the worker's log
        logger.info(
            "explainer loaded (%s) in %.1fs, before the worker is ready", self.explainer.source, time.time() - started
        )

    def _load_backend(self, model_dir: str, gpu_id: int | str | None, cuda_available: bool) -> backends.Backend:
        return backends.load(model_dir, self.options, gpu_id, cuda_available, threads_per_worker(self.options))

    def _warm_up(self) -> None:
        """A few forward passes from one short text to a full micro-batch at max_length, so
        that the first requests after a (re)start do not pay for lazy allocations and
        kernel selection; TorchServe marks the worker ready only after this."""
        size = max(1, self.options.micro_batch_size)
        for i in range(self.options.warmup_batches):
            words = max(1, self.max_length * i // max(1, self.options.warmup_batches - 1))
            texts = [" ".join(["warm"] * words)] * (1 if i == 0 else size)
            self._forward(self._tokenize(texts))

    def _model_max_length(self, config: Any) -> int:
        positions = getattr(config, "max_position_embeddings", None)
        limits = [n for n in (positions, self.tokenizer.model_max_length) if isinstance(n, int)]
        return min(limits) if limits else self.options.max_length

    def _header(self, idx: int, wanted: str) -> str | None:
        # Request headers include Authorization: never log them.
        for name, value in self.context.get_all_request_header(idx).items():
            if name.lower() == wanted and isinstance(value, str):
                return value
        return None

    def _request_id(self, idx: int) -> str:
        """Request `idx`'s ID, as the gateway sent it (a client's own header straight to
        TorchServe only when it is of the ID's alphabet and length), for the log."""
        value = self._header(idx, REQUEST_ID_HEADER.lower())
        return value if value is not None and REQUEST_ID.fullmatch(value) else NO_REQUEST_ID

    def _emit(self, name: str, value: float, metric_type: MetricTypes, error_type: str | None = None) -> None:
        """Record a handler metric (declared in metrics.yaml) through TorchServe's metrics API.
        Each call is a line the worker writes and the frontend parses: a handful per batch,
        none per accepted request (bench/handler_cost.py measures what they cost)."""
        dims = self.dimensions if error_type is None else [*self.dimensions, Dimension("ErrorType", error_type)]
        self.context.metrics.add_metric(name, value, "", dimensions=dims, metric_type=metric_type)

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[str]:
        """Answer each request of a TorchServe batch; a request can fail only itself.

        Every step that can fail on one request's bytes runs per request (parsing) or
        through `run_isolated` (tokenizing, the forward passes, and this whole batch as a
        last resort), so a failure is retried request by request and only the request
        that fails gets an error: a 4xx for bad input, a 500 JSON error of its own for a
        bug. Nothing escapes to TorchServe, which would fail the whole batch.
        """
        self.context = context
        # the gateway's request-ID parameter is for TorchServe's access log, not the request
        data = [{k: v for k, v in row.items() if k != REQUEST_ID_PARAM} for row in data]
        tally = Tally()
        # requests that waited past the queue budget are not run: their clients are gone
        # or about to be, and the model's time goes to requests that can still be answered
        now = time.time()
        late = {i: error for i in range(len(data)) if (error := self._overdue(i, now)) is not None}
        live = [i for i in range(len(data)) if i not in late]
        explain = {i for i in live if context.get_request_header(i, EXPLAIN_HEADER) == "True"}

        def attempt(rows: Sequence[int]) -> list[str]:
            mine = Tally()
            try:
                answers = self._answer(data, rows, explain, mine)
                if len(answers) != len(rows):
                    raise RuntimeError(f"{len(answers)} answers for {len(rows)} requests")
            except Exception:
                tally.add_seconds(mine)  # its requests are retried, and counted, one by one
                raise
            tally.add(mine)
            return answers

        answered = dict(zip(live, run_isolated(live, attempt), strict=True))
        out: list[str] = []
        for idx in range(len(data)):
            answer = answered[idx] if idx in answered else late[idx]
            if isinstance(answer, RequestError):  # over the queue budget
                logger.info("request %s refused: %s (%d)", self._request_id(idx), answer.kind, answer.status)
                out.append(self._refuse(idx, answer, tally))
            elif isinstance(answer, Exception):
                _log_failure("answering", answer, self._request_id(idx))
                out.append(self._refuse(idx, internal_error("answering"), tally))
            else:
                out.append(answer)
        # one line a batch: which requests it answered (tests/integration/test_request_ids.py)
        logger.info(
            "batch of %d answered: request ids %s", len(data), " ".join(map(self._request_id, range(len(data))))
        )
        try:
            self._emit_batch(tally, len(live) - len(explain))
        except Exception as e:  # the answers stand without their metrics
            _log_failure("counting the metrics of", e)
        return out

    def _overdue(self, idx: int, now: float) -> RequestError | None:
        """The 503 of a request that waited longer than `queue_budget_ms` since the gateway
        sent it on (its `sentiment-sent-at` header, seconds since the epoch on the pod's
        clock); None for one in time, and for one without the header (straight to port 8080)."""
        budget = self.options.queue_budget_ms
        sent = self._header(idx, SENT_AT_HEADER) if budget else None
        if sent is None:
            return None
        try:
            waited_ms = (now - float(sent)) * 1000
        except ValueError:
            return None
        if not waited_ms > budget:  # in time, or a stamp that is not a time ("nan")
            return None
        return Overloaded(
            f"waited {waited_ms:.0f} ms for a worker, over the {budget} ms the service keeps a request: "
            "it is over capacity; retry after a second",
        )

    def _refuse(self, idx: int, error: RequestError, tally: Tally) -> str:
        """Request `idx`'s error answer, in its protocol, counted."""
        envelope = Envelope(protocol_of(self._header(idx, PROTOCOL_HEADER)))
        tally.errors.append(error.kind)
        status, body = render(envelope, error, self.labels, self.served_model)
        return self._respond(idx, status, body, error)

    def _respond(self, idx: int, status: int, body: str, error: RequestError | None = None) -> str:
        """Request `idx`'s answer, the one place its status and headers are set: JSON, and
        the Retry-After its error asks for, if any."""
        self.context.set_response_content_type(idx, "application/json")
        self.context.set_response_status(status, "", idx)
        if error is not None and error.retry_after_s is not None:
            self.context.set_response_header(idx, "Retry-After", str(error.retry_after_s))
        return body

    def _emit_batch(self, tally: Tally, predictions: int) -> None:
        """The handler metrics of one batch, each once (docs/metrics.md): its size and texts
        and seconds per batch, an error count per request answered with an error."""
        if predictions:
            self._emit("SentimentBatchSize", predictions, MetricTypes.HISTOGRAM)
            self._emit("SentimentTexts", tally.texts, MetricTypes.COUNTER)
        if tally.preprocess_seconds is not None:
            self._emit("SentimentPreprocessSeconds", tally.preprocess_seconds, MetricTypes.HISTOGRAM)
        if tally.inference_seconds is not None:
            self._emit("SentimentInferenceSeconds", tally.inference_seconds, MetricTypes.HISTOGRAM)
        for seconds in tally.explain_seconds:
            self._emit("SentimentExplainSeconds", seconds, MetricTypes.HISTOGRAM)
        for kind in tally.errors:
            self._emit("SentimentRequestErrors", 1, MetricTypes.COUNTER, error_type=kind)

    def _answer(self, data: list[dict[str, Any]], rows: Sequence[int], explain: set[int], tally: Tally) -> list[str]:
        """The JSON bodies of the requests `rows` of the batch (statuses set in the context,
        metrics counted in `tally`): its predictions in one pass, then its explanations one
        by one."""
        predict = [i for i in rows if i not in explain]
        answers: dict[int, str] = {}
        if predict:
            batch = self.preprocess([data[i] for i in predict], predict, tally)
            answers.update(zip(predict, self.postprocess(self.inference(batch), predict), strict=True))
        for i in rows:
            if i in explain:
                answers[i] = self._explain(data[i], i, tally)
        return [answers[i] for i in rows]

    def _explain(self, row: dict[str, Any], idx: int, tally: Tally) -> str:
        """One explanation request: word attributions per text (handlers/explanations.py)."""
        started = time.perf_counter()
        error: RequestError | None = None
        try:
            explainer = self._explainer()
            request, steps = parse_explanation(
                row, self.options.limits, self.explain_limits, self._header(idx, "content-type")
            )
            results = [
                explainer.explain(text, steps, self.explain_limits.max_tokens, self._served) for text in request.texts
            ]
            status, body = 200, json.dumps(results if request.is_list else results[0])
            tally.explain_seconds.append(time.perf_counter() - started)
        except Exception as e:
            if isinstance(e, RequestError):
                error = e
            else:  # a bug met on this request: it alone gets a 500
                _log_failure("explaining", e, self._request_id(idx))
                error = internal_error("explaining")
            tally.errors.append(error.kind)
            status, body = error.status, json.dumps(error.body())
        return self._respond(idx, status, body, error)

    def _served(self, text: str) -> list[float]:
        """One text's class probabilities from the served model, as /predictions computes them."""
        return self._forward(self._tokenize([text]))[0]

    def _explainer(self) -> Explainer:
        """The explainer initialize() loaded; never loaded here, inside a batch. A 404 where
        explanations are off (the handler option explanations: false)."""
        if self.explainer is None:
            raise ExplanationsDisabled("explanations are off for this model (handler option explanations: false)")
        return self.explainer

    def _parse(self, row: dict[str, Any], idx: int) -> tuple[ParsedRequest | RequestError, Envelope]:
        envelope = Envelope()
        try:
            envelope = Envelope(protocol_of(self._header(idx, PROTOCOL_HEADER)))
            request, envelope = parse(row, self.options.limits, self._header(idx, "content-type"), envelope.protocol)
            return request, envelope
        except RequestError as e:
            error = e
        except Exception as e:  # a bug met on this request's bytes: it alone gets a 500
            _log_failure("parsing", e, self._request_id(idx))
            error = internal_error("parsing")
        logger.info("request %s refused: %s (%d)", self._request_id(idx), error.kind, error.status)
        return error, envelope  # counted as an error where its answer is written (postprocess)

    def preprocess(
        self, data: list[dict[str, Any]], indices: Sequence[int] | None = None, tally: Tally | None = None
    ) -> Preprocessed:
        """Parse each request and tokenize the batch's texts. `indices`: the requests' places
        in TorchServe's batch (their headers and answers), when `data` is part of it."""
        started = time.perf_counter()
        tally = Tally() if tally is None else tally
        indices = list(range(len(data))) if indices is None else indices
        parsed = [self._parse(row, idx) for row, idx in zip(data, indices, strict=True)]
        batch = flatten([request for request, _ in parsed])
        encodings = run_isolated(batch.texts, self._tokenize) if batch.texts else []
        tally.preprocess_seconds = time.perf_counter() - started
        return Preprocessed(batch, encodings, [envelope for _, envelope in parsed], tally)

    def _tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        return self.tokenizer.tokenize(texts, self.max_length)

    def _forward(self, features: Sequence[Encoding]) -> list[list[float]]:
        return self.backend.probabilities(pad(features, self.tokenizer.pad_values, self.tokenizer.padding_left))

    def inference(self, data: Preprocessed, *args: Any, **kwargs: Any) -> Inferred:
        """Forward passes over length-sorted micro-batches of the texts that tokenized;
        one probability list (or the RequestError of a failed step) per text."""
        tokenized: dict[int, Encoding] = {}
        for i, encoding in enumerate(data.encodings):
            if isinstance(encoding, Exception):
                _log_failure("tokenizing", encoding)
            else:
                tokenized[i] = encoding
        # a text that did not tokenize keeps this error; each other one gets its probabilities
        probabilities: list[list[float] | RequestError] = [internal_error("tokenizing")] * len(data.encodings)
        inferred = Inferred(data.batch, probabilities, data.envelopes, data.tally)
        if not tokenized:
            return inferred
        started = time.perf_counter()
        ok = list(tokenized)
        for group in micro_batches([len(tokenized[i]["input_ids"]) for i in ok], self.options.micro_batch_size):
            texts = [ok[g] for g in group]
            results = run_isolated([tokenized[i] for i in texts], self._forward)
            for i, result in zip(texts, results, strict=True):
                if isinstance(result, Exception):
                    _log_failure("running the model on", result)
                    probabilities[i] = internal_error("running the model on")
                else:
                    probabilities[i] = result
        data.tally.inference_seconds = time.perf_counter() - started
        return inferred

    def postprocess(self, data: Inferred, indices: Sequence[int] | None = None) -> list[str]:
        batch, tally = data.batch, data.tally
        indices = list(range(len(batch.requests))) if indices is None else indices
        out: list[str] = []
        for idx, request, envelope, outcome in zip(
            indices, batch.requests, data.envelopes, outcomes(batch, data.probabilities, self.labels), strict=True
        ):
            if isinstance(outcome, RequestError):
                tally.errors.append(outcome.kind)
            else:
                tally.texts += len(outcome)
            is_list = not isinstance(request, RequestError) and request.is_list
            status, body = render(envelope, outcome, self.labels, self.served_model, is_list)
            out.append(self._respond(idx, status, body, outcome if isinstance(outcome, RequestError) else None))
        return out


def _log_failure(step: str, error: BaseException, request_id: str = NO_REQUEST_ID) -> None:
    """Log an unexpected exception by type and stack, never its message: messages of
    parsers and tokenizers can quote the request's text. `request_id`: the request's, where
    one request is known (a step over a batch's texts names none)."""
    stack = "".join(traceback.format_tb(error.__traceback__))
    logger.error("%s failed while %s request %s (message withheld):\n%s", type(error).__name__, step, request_id, stack)
