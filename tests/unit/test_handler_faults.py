"""Fault injection: a bug that strikes one request of a batch costs that request alone.

The tokenizer, or the model's forward pass, raises for the request whose text holds a
marker (or the forward pass gives that text a malformed row, which fails later, outside
the step's own isolation, and so takes the handler's last-resort path: the whole batch
retried request by request). Each time, the rest of the batch is answered with exactly
the predictions it gets alone, the marked request gets a 500 JSON InternalServerError of
its own, and every handler metric is counted once per batch, or once per request
answered with an error, as docs/metrics.md documents it: however often a request was
tried, it is counted once.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest
from handler_helpers import emitted_metrics, initialized_handler, run_batch

JSON = "application/json"
MARK = "kaboom"


class Fault(Exception):
    """What the injected bug raises (its message quotes the text, as a tokenizer's might)."""


@pytest.fixture(scope="module", params=["torch", "onnxruntime-int8"])
def handler_and_context(request, tiny_model_dir, onnx_model_dir):
    """The handler on the tiny model: PyTorch with several texts per forward pass, and the
    shipped ONNX Runtime int8 graph with one text per pass (model-config.yaml)."""
    if request.param == "torch":
        return initialized_handler(tiny_model_dir, {"micro_batch_size": 8})
    return initialized_handler(
        onnx_model_dir["int8"], {"backend": "onnxruntime", "quantize": "int8", "micro_batch_size": 1}
    )


def marked_rows(handler, batch) -> list[int]:
    """The rows of a padded batch (text_classification.pad) that hold the marker's tokens."""
    ids = handler.tokenizer.backend.encode(MARK, add_special_tokens=False).ids
    return [
        i
        for i, row in enumerate(batch["input_ids"].tolist())
        if any(row[j : j + len(ids)] == ids for j in range(len(row)))
    ]


def inject(handler, monkeypatch, where: str) -> None:
    backend = handler.backend
    probabilities = backend.probabilities
    if where == "tokenizer":
        tokenizer = handler.tokenizer

        class Faulty:
            def __getattr__(self, name):
                return getattr(tokenizer, name)

            def tokenize(self, texts, max_length):
                if any(MARK in t for t in texts):
                    raise Fault(f"cannot tokenize {texts!r}")
                return tokenizer.tokenize(texts, max_length)

        monkeypatch.setattr(handler, "tokenizer", Faulty())
    elif where == "forward":

        def faulty(batch):
            if marked_rows(handler, batch):
                raise Fault("the forward pass failed")
            return probabilities(batch)

        monkeypatch.setattr(backend, "probabilities", faulty)
    else:  # a malformed row for the marked text: fails while answering, past the step's isolation

        def malformed(batch):
            marked = marked_rows(handler, batch)
            return [[] if i in marked else p for i, p in enumerate(probabilities(batch))]

        monkeypatch.setattr(backend, "probabilities", malformed)


def native(text):
    return {"body": json.dumps({"text": text}).encode()}, JSON


def v1(*texts):
    return {"body": json.dumps({"instances": list(texts)}).encode()}, JSON, {"sentiment-protocol": "kserve-v1"}


def v2(*texts):
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}
    return {"body": json.dumps({"inputs": [tensor]}).encode()}, JSON, {"sentiment-protocol": "oip-v2"}


@pytest.mark.parametrize("where", ["tokenizer", "forward", "answering"])
@pytest.mark.parametrize(
    "marked",
    [native(f"so {MARK} this"), v1("fine", f"so {MARK} this"), v2(f"so {MARK} this")],
    ids=["native", "v1", "v2"],
)
def test_a_fault_on_one_request_costs_it_alone_and_is_counted_once(
    handler_and_context, monkeypatch, caplog, where, marked
):
    handler, context = handler_and_context
    good = [native("I love it"), native(["awful", "fine, really"]), v1("great", "bad"), v2("meh")]
    alone = [run_batch(handler, context, [row])[0] for row in good]
    assert all(status == 200 for status, _, _ in alone)
    rows = [good[0], marked, good[1], ({"body": b'{"text": '}, JSON), good[2], good[3]]
    inject(handler, monkeypatch, where)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        answers = run_batch(handler, context, rows)

    assert [a for i, a in enumerate(answers) if i in (0, 2, 4, 5)] == alone  # the rest of the batch, as alone
    status, body, content_type = answers[1]
    assert (status, content_type) == (500, JSON)
    if len(marked) == 2:
        assert body["code"] == 500 and body["type"] == "InternalServerError"
    else:  # in its own protocol's error shape
        assert set(body) == {"error"} and body["error"].startswith("InternalServerError")
    assert answers[3][0] == 400 and answers[3][1]["type"] == "InvalidJSON"
    assert MARK not in caplog.text  # logged by exception type and stack, never its message

    emitted = emitted_metrics(caplog)
    lines = Counter(name for name, _, _ in emitted)
    values = {name: value for name, value, _ in emitted}
    for name in ("SentimentBatchSize", "SentimentTexts", "SentimentPreprocessSeconds", "SentimentInferenceSeconds"):
        assert lines[name] == 1, (name, lines)  # once per batch, however often a request was tried
    assert values["SentimentBatchSize"] == len(rows)
    texts = 1 + 2 + 2 + 1  # those of the requests answered with predictions
    assert values["SentimentTexts"] == texts
    errors = sorted(dims["ErrorType"] for name, _, dims in emitted if name == "SentimentRequestErrors")
    assert errors == ["InternalServerError", "InvalidJSON"]  # once per request answered with an error
    # docs/metrics.md: texts per accepted request = SentimentTexts / (SentimentBatchSize - SentimentRequestErrors)
    assert values["SentimentTexts"] / (values["SentimentBatchSize"] - len(errors)) == texts / 4
    assert "SentimentExplainSeconds" not in lines


def test_a_request_that_fails_even_alone_is_counted_once(handler_and_context, monkeypatch, caplog):
    """The last resort's last answer: a request whose answering fails alone too gets its
    500 from handle() itself, and one error count."""
    handler, context = handler_and_context
    inject(handler, monkeypatch, "answering")
    with caplog.at_level(logging.INFO):
        answers = run_batch(handler, context, [native(f"{MARK}"), native(f"{MARK} again")])
    assert [(s, b["type"]) for s, b, _ in answers] == [(500, "InternalServerError")] * 2
    emitted = emitted_metrics(caplog)
    lines = Counter(name for name, _, _ in emitted)
    assert lines["SentimentBatchSize"] == lines["SentimentTexts"] == 1
    values = {name: value for name, value, _ in emitted}
    assert (values["SentimentBatchSize"], values["SentimentTexts"]) == (2, 0)
    errors = [dims["ErrorType"] for name, _, dims in emitted if name == "SentimentRequestErrors"]
    assert errors == ["InternalServerError"] * 2
