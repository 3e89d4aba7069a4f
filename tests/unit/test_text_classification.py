"""Unit tests of the handler's plain functions: no server, no model."""

from __future__ import annotations

import pytest

from bodies import Limits, ParsedRequest
from errors import EmptyText, InternalServerError, RequestError, TooManyTexts
from native import parse_request
from text_classification import (
    HandlerOptions,
    flatten,
    label_names,
    micro_batches,
    outcomes,
    prediction,
    threads_per_worker,
    usable_cores,
)

JSON = "application/json"
LIMITS = Limits(max_texts_per_request=3, max_text_chars=50)


def parse(row, content_type=None):
    return parse_request(row, LIMITS, content_type)


def refused(row, content_type=None) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse(row, content_type)
    return info.value


@pytest.mark.parametrize(
    "row, content_type, texts, is_list",
    [
        ({"body": bytearray(b'{"text": "I love it"}')}, JSON, ("I love it",), False),
        ({"body": b'{"text": ["a", "b"]}'}, JSON, ("a", "b"), True),
        ({"body": b'{"text": ["only one"]}'}, JSON, ("only one",), True),
        ({"body": b"I love it"}, "text/plain", ("I love it",), False),
        ({"body": b"I love it"}, "text/plain; charset=utf-8", ("I love it",), False),
        # text/plain is taken literally even when it looks like JSON
        ({"body": b'{"text": 1}'}, "text/plain", ('{"text": 1}',), False),
        # no content type: JSON is recognised by its first character
        ({"body": b' {"text": "x"}'}, None, ("x",), False),
        ({"body": b"plain words"}, None, ("plain words",), False),
        ({"body": b'{"text": "x"}'}, "application/vnd.api+json", ("x",), False),
        ({"body": '{"text": "already text"}'}, JSON, ("already text",), False),
        # TorchServe parsed the JSON itself (decode_input_request=true)
        ({"body": {"text": "parsed"}}, JSON, ("parsed",), False),
        ({"data": b"multipart field"}, "multipart/form-data; boundary=x", ("multipart field",), False),
        ({"text": bytearray(b"form field")}, "application/x-www-form-urlencoded", ("form field",), False),
        (
            {"body": "ünïcödé 🙂 and\tcontrol\x01chars".encode()},
            "text/plain",
            ("ünïcödé 🙂 and\tcontrol\x01chars",),
            False,
        ),
    ],
)
def test_accepted_bodies(row, content_type, texts, is_list):
    assert parse(row, content_type) == ParsedRequest(texts, is_list)


@pytest.mark.parametrize(
    "row, content_type, status, kind",
    [
        ({"body": b""}, JSON, 400, "EmptyBody"),
        ({}, None, 400, "EmptyBody"),
        ({"body": b"   \n\t "}, "text/plain", 400, "EmptyText"),
        ({"body": b'{"text": ""}'}, JSON, 400, "EmptyText"),
        ({"body": b'{"text": "  "}'}, JSON, 400, "EmptyText"),
        ({"body": b'{"text": []}'}, JSON, 400, "EmptyText"),
        ({"body": b'{"text": ["ok", " "]}'}, JSON, 400, "EmptyText"),
        ({"body": b'{"text": '}, JSON, 400, "InvalidJSON"),
        ({"body": b"not json"}, JSON, 400, "InvalidJSON"),
        ({"body": b'{"text": "x"'}, None, 400, "InvalidJSON"),
        ({"body": b'"just a string"'}, JSON, 400, "InvalidInput"),
        ({"body": b'["a", "b"]'}, JSON, 400, "InvalidInput"),
        ({"body": b'{"txt": "typo"}'}, JSON, 400, "InvalidInput"),
        ({"body": b'{"text": "x", "extra": 1}'}, JSON, 400, "InvalidInput"),
        ({"body": b'{"text": 5}'}, JSON, 400, "InvalidInput"),
        ({"body": b'{"text": null}'}, JSON, 400, "InvalidInput"),
        ({"body": b'{"text": {"a": 1}}'}, JSON, 400, "InvalidInput"),
        ({"body": b'{"text": ["ok", 7]}'}, JSON, 400, "InvalidInput"),
        ({"body": b'{"text": ["a", "b", "c", "d"]}'}, JSON, 413, "TooManyTexts"),
        ({"body": b"x" * 51}, "text/plain", 413, "TextTooLong"),
        ({"body": b"\xff\xfe\x00bad"}, "text/plain", 400, "InvalidEncoding"),
        ({"body": b'{"text": "caf\xe9"}'}, JSON, 400, "InvalidEncoding"),
        ({"a": b"1", "b": b"2"}, "application/x-www-form-urlencoded", 415, "UnsupportedMediaType"),
        ({"body": b"<text>hi</text>"}, "application/xml", 415, "UnsupportedMediaType"),
        ({"body": b"\x89PNG"}, "image/png", 415, "UnsupportedMediaType"),
        ({"body": b"hi"}, "application/octet-stream", 415, "UnsupportedMediaType"),
        # `curl -d 'I love it'`: a form whose only "field" TorchServe drops
        ({}, "application/x-www-form-urlencoded", 415, "UnsupportedMediaType"),
    ],
)
def test_refused_bodies(row, content_type, status, kind):
    error = refused(row, content_type)
    assert (error.status, error.kind) == (status, kind)
    assert error.body() == {"code": status, "type": kind, "message": error.message}


def test_error_messages_do_not_quote_user_text():
    secret = "my-secret-diary-entry"
    for body in (f'{{"text": 5, "{secret}": 1}}', f'{{"{secret}"', secret * 3):
        error = refused({"body": body.encode()}, JSON)
        assert secret not in error.message
    error = refused({"body": f'{{"text": ["{secret}", 3]}}'.encode()}, JSON)
    assert secret not in error.message and '"text"[1]' in error.message


def test_flatten_keeps_each_request_slice_and_skips_failures():
    parsed = [
        ParsedRequest(("a",), False),
        EmptyText("x"),
        ParsedRequest(("b", "c"), True),
    ]
    batch = flatten(parsed)
    assert batch.texts == ["a", "b", "c"]
    assert batch.slices == [slice(0, 1), None, slice(1, 3)]


def test_outcomes_map_probabilities_back_to_requests():
    too_many = TooManyTexts("too many")
    parsed = [ParsedRequest(("good",), False), too_many, ParsedRequest(("bad", "good"), True)]
    batch = flatten(parsed)
    probabilities = [[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]
    out = outcomes(batch, probabilities, ["negative", "positive"])
    assert out[0] == [{"label": "positive", "score": 0.9, "scores": {"negative": 0.1, "positive": 0.9}}]
    assert out[1] is too_many
    assert [r["label"] for r in out[2]] == ["negative", "positive"]


def test_a_failed_step_or_non_finite_scores_answer_their_request_alone():
    batch = flatten([ParsedRequest(("x",), False), ParsedRequest(("y", "z"), True)])
    failed = InternalServerError("tokenizing failed")
    out = outcomes(batch, [[float("nan"), float("nan")], failed, [0.5, 0.5]], ["a", "b"])
    assert isinstance(out[0], RequestError) and out[0].kind == "InternalServerError"
    assert out[1] is failed


def test_prediction_picks_the_most_probable_label():
    assert prediction([0.2, 0.5, 0.3], ["a", "b", "c"])["label"] == "b"


def test_label_names_from_id2label_override_and_fallback():
    assert label_names({"0": "neg", "1": "pos"}, 2) == ["neg", "pos"]
    assert label_names({0: "neg"}, 2) == ["neg", "LABEL_1"]
    assert label_names({0: "LABEL_0", 1: "LABEL_1"}, 2, ["bad", "good"]) == ["bad", "good"]
    with pytest.raises(ValueError, match="2 classes"):
        label_names(None, 2, ["only-one"])


def test_handler_options_from_model_yaml():
    options = HandlerOptions.from_model_yaml(
        {"handler": {"max_length": 64, "labels": ["n", "p"], "max_texts_per_request": 4}}
    )
    assert options.max_length == 64 and options.labels == ("n", "p")
    assert options.limits == Limits(4, HandlerOptions().max_text_chars)
    assert HandlerOptions.from_model_yaml({}) == HandlerOptions()
    with pytest.raises(ValueError, match="max_lenght"):
        HandlerOptions.from_model_yaml({"handler": {"max_lenght": 64}})


def test_threads_per_worker():
    assert threads_per_worker(HandlerOptions(torch_threads=3)) == 3
    assert threads_per_worker(HandlerOptions()) == usable_cores()


def test_micro_batches_group_similar_lengths_and_cover_every_text():
    lengths = [30, 5, 12, 40, 6, 11, 29]
    groups = micro_batches(lengths, 3)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert [len(g) for g in groups] == [3, 3, 1]
    assert [[lengths[i] for i in g] for g in groups] == [[5, 6, 11], [12, 29, 30], [40]]
    assert micro_batches(lengths, 0) == [list(range(len(lengths)))]
    assert micro_batches([], 8) == []


def test_deployment_overrides_go_over_the_archives_handler_options():
    archived = {"handler": {"max_length": 64, "torch_threads": 1}}
    options = HandlerOptions.from_model_yaml(archived, {"torch_threads": 2, "max_text_chars": 50})
    assert (options.max_length, options.torch_threads, options.max_text_chars) == (64, 2, 50)
    with pytest.raises(ValueError, match="torch_thread"):
        HandlerOptions.from_model_yaml(archived, {"torch_thread": 2})
