"""The handler as a TorchServe worker runs it, for the unit tests: TorchServe's real
Context (a RequestProcessor per request, the metrics cache from metrics.yaml), so status
codes, content types and metrics the handler sets are read back as the worker would."""

from __future__ import annotations

import json

from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from common.paths import ROOT
from sentiment_handler import SentimentHandler

JSON = "application/json"


def make_context(model_dir, handler_options=None):
    metrics = MetricsCacheYamlImpl(config_file_path=str(ROOT / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = "sentiment"
    model_yaml = {"handler": handler_options or {}}
    return Context(
        "sentiment", str(model_dir), {"model": {}}, 8, None, "0.12.0", metrics=metrics, model_yaml_config=model_yaml
    )


def initialized_handler(model_dir, handler_options=None):
    """A SentimentHandler initialized on `model_dir` as a worker would, and its context."""
    context = make_context(model_dir, handler_options)
    handler = SentimentHandler()
    handler.initialize(context)
    return handler, context


def run_batch(handler, context, requests):
    """requests: [(row, content_type[, other headers])] -> [(status, parsed body, content type)]"""
    context.request_ids = {i: f"req-{i}" for i in range(len(requests))}
    context.metrics.set_request_ids(context.request_ids)
    context.request_processor = [
        RequestProcessor({"Content-Type": r[1], "Authorization": "Bearer not-for-logs", **(r[2] if len(r) > 2 else {})})
        for r in requests
    ]
    out = handler.handle([r[0] for r in requests], context)
    assert len(out) == len(requests)
    return [
        (context.get_response_status(i)[0], json.loads(body), context.get_response_content_type(i))
        for i, body in enumerate(out)
    ]


def emitted_metrics(caplog) -> list[tuple[str, float, dict]]:
    """(name, value, dimensions) of each metric the handler emitted through TorchServe's
    metrics API: the worker writes them as [METRICS] lines for the frontend to collect."""
    out = []
    for record in caplog.records:
        message = record.getMessage()
        if message.startswith("[METRICS]"):
            head, dims = message[len("[METRICS]") :].split("|#")[:2]
            name_unit, value = head.rsplit(":", 1)
            out.append((name_unit.split(".")[0], float(value), dict(d.split(":", 1) for d in dims.split(","))))
    return out
