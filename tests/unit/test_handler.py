"""Unit tests of SentimentHandler with TorchServe's real Context, on a tiny model.

The context is built the way TorchServe's worker builds it (ts.context.Context with a
RequestProcessor per request and the metrics cache from metrics.yaml), so status codes,
content types and metrics set by the handler are read back as the worker would.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from handler_helpers import JSON, emitted_metrics, initialized_handler, make_context, run_batch

from sentiment_handler import SentimentHandler


@pytest.fixture(scope="module")
def handler_and_context(tiny_model_dir):
    return initialized_handler(tiny_model_dir)


def test_initialize_reads_labels_and_clamps_max_length(handler_and_context):
    handler, _ = handler_and_context
    assert handler.labels == ["negative", "positive"]
    assert handler.max_length == 64  # the tiny model has 64 positions; the option says 128
    assert handler.device == torch.device("cpu")
    assert not handler.backend.model.training


def test_batch_answers_each_request_and_isolates_bad_ones(handler_and_context):
    handler, context = handler_and_context
    results = run_batch(
        handler,
        context,
        [
            ({"body": b'{"text": "I love it"}'}, JSON),
            ({"body": b'{"text": '}, JSON),
            ({"body": b"plain text body"}, "text/plain"),
            ({"body": b'{"text": ["one", "two", "three"]}'}, JSON),
            ({"body": b"\xff\xfe"}, "text/plain"),
            ({"text": b"a form field"}, "application/x-www-form-urlencoded"),
        ],
    )
    statuses = [status for status, _, _ in results]
    assert statuses == [200, 400, 200, 200, 400, 200]
    assert all(ct == JSON for _, _, ct in results)
    single = results[0][1]
    assert set(single) == {"label", "score", "scores"}
    assert single["label"] in ("negative", "positive")
    assert sum(single["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert single["score"] == max(single["scores"].values())
    assert isinstance(results[3][1], list) and len(results[3][1]) == 3
    assert results[1][1]["type"] == "InvalidJSON"
    assert results[4][1]["type"] == "InvalidEncoding"


def test_same_text_same_answer_alone_or_padded_in_a_batch(handler_and_context):
    handler, context = handler_and_context
    text = b'{"text": "short"}'
    alone = run_batch(handler, context, [({"body": text}, JSON)])[0][1]
    batched = run_batch(
        handler,
        context,
        [
            ({"body": b'{"text": "a much longer text that forces padding of the short one " }'}, JSON),
            ({"body": text}, JSON),
        ],
    )[1][1]
    assert alone["label"] == batched["label"]
    assert alone["score"] == pytest.approx(batched["score"], abs=1e-5)


def test_long_text_is_truncated_not_refused(handler_and_context):
    handler, context = handler_and_context
    long_text = " ".join(["word"] * 2000)  # ~2000 tokens, under max_text_chars
    ((status, body, _),) = run_batch(handler, context, [({"body": long_text.encode()}, "text/plain")])
    assert status == 200 and body["label"] in ("negative", "positive")


def test_a_batch_of_only_bad_requests_runs_no_model(handler_and_context, monkeypatch):
    handler, context = handler_and_context
    monkeypatch.setattr(handler, "backend", None)  # would raise if called
    results = run_batch(handler, context, [({"body": b""}, JSON), ({}, None)])
    assert [r[0] for r in results] == [400, 400]


def test_handler_metrics(handler_and_context, caplog):
    """What the handler emits for a batch of one 2-text request and one empty body."""
    handler, context = handler_and_context
    with caplog.at_level(logging.INFO):
        run_batch(handler, context, [({"body": b'{"text": ["a", "b"]}'}, JSON), ({"body": b""}, JSON)])
    emitted = emitted_metrics(caplog)
    values = {name: value for name, value, _ in emitted}
    assert values["SentimentBatchSize"] == 2  # requests in the batch
    assert values["SentimentTexts"] == 2  # texts classified
    errors = [(value, dims) for name, value, dims in emitted if name == "SentimentRequestErrors"]
    assert [(v, d["ErrorType"]) for v, d in errors] == [(1, "EmptyBody")]
    for name in ("SentimentPreprocessSeconds", "SentimentInferenceSeconds"):
        assert 0 < values[name] < 10, name  # seconds, not milliseconds
    assert {dims["ModelName"] for _, _, dims in emitted} == {"sentiment"}


def test_metric_lines_per_batch_do_not_grow_with_accepted_requests(handler_and_context, caplog):
    """Every metric is a line the worker writes and the frontend parses: per batch, not
    per accepted request (a refused request adds its error count)."""
    handler, context = handler_and_context
    counts = []
    for size in (1, 8):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            run_batch(handler, context, [({"body": b'{"text": "fine"}'}, JSON)] * size)
        counts.append(len(emitted_metrics(caplog)))
    assert counts[0] == counts[1] > 0


def test_no_user_text_or_token_in_logs(handler_and_context, caplog):
    handler, context = handler_and_context
    secret = "my-very-private-sentence"
    with caplog.at_level(logging.DEBUG):
        run_batch(
            handler,
            context,
            [
                ({"body": json.dumps({"text": secret}).encode()}, JSON),
                ({"body": json.dumps({"text": [secret, 5]}).encode()}, JSON),
                ({"body": (secret + '"{').encode()}, JSON),
            ],
        )
    assert secret not in caplog.text
    assert "not-for-logs" not in caplog.text


def test_labels_option_overrides_checkpoint_labels(tiny_model_dir):
    handler, context = initialized_handler(tiny_model_dir, {"labels": ["bad", "good"], "torch_threads": 1})
    assert handler.labels == ["bad", "good"]
    assert torch.get_num_threads() == 1
    ((status, body, _),) = run_batch(handler, context, [({"body": b"fine"}, "text/plain")])
    assert status == 200 and set(body["scores"]) == {"bad", "good"}


def test_unknown_handler_option_fails_initialize(tiny_model_dir):
    with pytest.raises(ValueError, match="quantise"):
        SentimentHandler().initialize(make_context(tiny_model_dir, {"quantise": "int8"}))


def test_bad_quantize_value_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="quantize must be one of none, int8"):
        SentimentHandler().initialize(make_context(tiny_model_dir, {"quantize": "fp8"}))


@pytest.mark.parametrize("micro_batch_size", [0, 2, 8])
def test_answers_stay_in_request_order_whatever_the_micro_batching(tiny_model_dir, micro_batch_size):
    handler, context = initialized_handler(tiny_model_dir, {"micro_batch_size": micro_batch_size})
    texts = [
        "a fairly long sentence about nothing in particular at all",
        "short",
        "medium length text here",
        "x",
        "another long one, with commas, and more words in it",
    ]
    alone = [run_batch(handler, context, [({"body": t.encode()}, "text/plain")])[0][1] for t in texts]
    rows = [({"body": t.encode()}, "text/plain") for t in texts[:2]]
    rows.append(({"body": json.dumps({"text": texts[2:]}).encode()}, JSON))
    together = run_batch(handler, context, rows)
    answers = [together[0][1], together[1][1], *together[2][1]]
    for one, other in zip(alone, answers, strict=True):
        assert one["scores"]["positive"] == pytest.approx(other["scores"]["positive"], abs=1e-5)


def test_the_tests_slow_handler_slows_each_batch_and_the_shipped_one_has_no_such_option(tiny_model_dir):
    import time

    from slow_handler import SECTION, SlowSentimentHandler

    context = make_context(tiny_model_dir, {"explanations": False})
    context.model_yaml_config[SECTION] = {"latency_ms": 300}
    handler = SlowSentimentHandler()
    handler.initialize(context)
    started = time.perf_counter()
    ((status, body, _),) = run_batch(handler, context, [({"body": b"slow"}, "text/plain")])
    assert status == 200 and body["label"] and time.perf_counter() - started >= 0.3
    with pytest.raises(ValueError, match="simulated_latency_ms"):
        initialized_handler(tiny_model_dir, {"simulated_latency_ms": 300})


def test_options_from_the_deployment_file_go_over_the_archives(tiny_model_dir, tmp_path, monkeypatch):
    overrides = tmp_path / "handler.yaml"
    overrides.write_text("max_texts_per_request: 2\nlabels: [bad, good]\n")
    monkeypatch.setenv("SENTIMENT_HANDLER_OPTIONS", str(overrides))
    handler, context = initialized_handler(tiny_model_dir, {"max_texts_per_request": 32})
    assert handler.options.max_texts_per_request == 2 and handler.labels == ["bad", "good"]
    ((status, body, _),) = run_batch(handler, context, [({"body": b'{"text": ["a", "b", "c"]}'}, JSON)])
    assert status == 413 and body["type"] == "TooManyTexts"
    overrides.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="mapping"):
        SentimentHandler().initialize(make_context(tiny_model_dir))


def test_torchserve_finds_the_handler_class_in_its_module():
    """TorchServe's loader takes the one class a handler module defines, and refuses a
    module that defines more (the worker then dies at every start, no request served)."""
    from ts.model_loader import TsModelLoader

    import sentiment_handler

    handle, initialize = TsModelLoader()._get_class_entry_point(sentiment_handler)
    assert handle.__self__.__class__ is SentimentHandler and initialize.__self__ is handle.__self__


def test_requests_past_the_queue_budget_get_503_and_cost_the_model_nothing(tiny_model_dir, monkeypatch, caplog):
    """The gateway stamps each request with its clock when it sends it on; one that waited
    longer than queue_budget_ms gets a 503 Overloaded with Retry-After, in its protocol,
    and the others of its batch are answered as if it were not there."""
    import time

    # a budget of 10 s, stamps 50 ms and 60 s old: which is late does not depend on how fast
    # this machine runs the batch (a 200 ms budget did, on a busy machine)
    handler, context = initialized_handler(tiny_model_dir, {"queue_budget_ms": 10_000})
    now = time.time()
    fresh, stale = {"sentiment-sent-at": f"{now - 0.05:.3f}"}, {"sentiment-sent-at": f"{now - 60:.3f}"}
    alone = run_batch(handler, context, [({"body": b'{"text": "fine"}'}, JSON)])[0]
    forwarded: list[int] = []
    real = handler._forward
    monkeypatch.setattr(handler, "_forward", lambda features: forwarded.append(len(features)) or real(features))
    with caplog.at_level(logging.INFO):
        answers = run_batch(
            handler,
            context,
            [
                ({"body": b'{"text": "fine"}'}, JSON, fresh),
                ({"body": b'{"text": ["a", "b", "c"]}'}, JSON, stale),
                ({"body": b'{"text": "fine"}'}, JSON),  # no stamp: straight to TorchServe, always run
                ({"body": b'{"instances": ["a"]}'}, JSON, {**stale, "sentiment-protocol": "kserve-v1"}),
                ({"body": b'{"text": "fine"}'}, JSON, {"sentiment-sent-at": "not a time"}),  # run, not refused
                ({"body": b'{"text": "fine"}'}, JSON, {"sentiment-sent-at": "nan"}),  # nor this
            ],
        )
    assert [a[0] for a in answers] == [200, 503, 200, 503, 200, 200]
    assert answers[0] == answers[2] == answers[4] == answers[5] == alone
    assert answers[1][1]["type"] == "Overloaded" and answers[1][2] == JSON
    assert answers[3][1]["error"].startswith("Overloaded")  # KServe v1's error shape
    assert [context.get_response_headers(i).get("Retry-After") for i in range(6)] == [None, "1", None, "1", None, None]
    assert sum(forwarded) == 4  # the four in time; none of the stale requests' four texts
    batch_sizes = [v for name, v, _ in emitted_metrics(caplog) if name == "SentimentBatchSize"]
    errors = [d["ErrorType"] for name, _, d in emitted_metrics(caplog) if name == "SentimentRequestErrors"]
    assert batch_sizes == [4] and errors == ["Overloaded", "Overloaded"]


def test_no_queue_budget_runs_every_request_however_long_it_waited(tiny_model_dir):
    handler, context = initialized_handler(tiny_model_dir)  # queue_budget_ms 0
    old = {"sentiment-sent-at": "1000000000.000"}  # 2001
    assert run_batch(handler, context, [({"body": b'{"text": "fine"}'}, JSON, old)])[0][0] == 200
