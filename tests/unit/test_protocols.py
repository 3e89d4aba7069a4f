"""KServe v1 and Open Inference Protocol v2 envelopes: parsing, errors in each protocol's
shape, answers; and one batch mixing all three protocols in the handler (tiny model)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from bodies import Limits
from contract import KSERVE_V1, NATIVE, OIP_V2
from errors import RequestError, TooManyTexts
from protocols import Envelope, Model, parse, protocol_of, render

LIMITS = Limits(max_texts_per_request=3, max_text_chars=50)
JSON = "application/json"
MODEL = Model("sentiment", "1.0")


def v2(data, shape=None, **extra):
    tensor = {"name": "text", "datatype": "BYTES", "shape": shape if shape is not None else [len(data)], "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def refused(body, protocol, content_type=JSON) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse({"body": body}, LIMITS, content_type, protocol)
    return info.value


def test_the_protocol_comes_from_the_gateways_header_and_defaults_to_native():
    assert protocol_of("kserve-v1") == KSERVE_V1 and protocol_of("oip-v2") == OIP_V2
    assert protocol_of(None) == NATIVE and protocol_of("v3") == NATIVE


@pytest.mark.parametrize(
    "body, texts",
    [
        (b'{"instances": ["I love it", "awful"]}', ("I love it", "awful")),
        (b'{"instances": [{"text": "fine"}], "parameters": {}}', ("fine",)),
    ],
)
def test_v1_instances(body, texts):
    request, envelope = parse({"body": body}, LIMITS, JSON, KSERVE_V1)
    assert request.texts == texts and envelope.protocol == KSERVE_V1


@pytest.mark.parametrize(
    "body, status, kind",
    [
        (b'{"instances": ', 400, "InvalidJSON"),
        (b'["a"]', 400, "InvalidInput"),
        (b'{"text": "a"}', 400, "InvalidInput"),
        (b'{"instances": "a"}', 400, "InvalidInput"),
        (b'{"instances": []}', 400, "EmptyText"),
        (b'{"instances": ["a", "b", "c", "d"]}', 413, "TooManyTexts"),
        (b'{"instances": [3]}', 400, "InvalidInput"),
        (b'{"instances": [{"txt": "a"}]}', 400, "InvalidInput"),
        (b'{"instances": [" "]}', 400, "EmptyText"),
        (b'{"instances": ["' + b"x" * 51 + b'"]}', 413, "TextTooLong"),
        (b"", 400, "EmptyBody"),
    ],
)
def test_v1_refusals(body, status, kind):
    error = refused(body, KSERVE_V1)
    assert (error.status, error.kind) == (status, kind)


def test_json_only_protocols_refuse_text_and_forms():
    assert refused(b"I love it", OIP_V2, "text/plain").status == 415
    with pytest.raises(RequestError) as info:
        parse({"text": b"a form field"}, LIMITS, "application/x-www-form-urlencoded", KSERVE_V1)
    assert info.value.status == 415


def test_v2_inputs_flat_or_nested_with_id_and_outputs():
    request, envelope = parse({"body": v2(["a", "b"], id="req-7", outputs=[{"name": "label"}])}, LIMITS, JSON, OIP_V2)
    assert request.texts == ("a", "b")
    assert envelope == Envelope(OIP_V2, "req-7", ("label",))
    request, _ = parse({"body": v2([["a"], ["b"]], shape=[2, 1])}, LIMITS, JSON, OIP_V2)
    assert request.texts == ("a", "b")


@pytest.mark.parametrize(
    "body, status, kind",
    [
        (b'{"inputs": [', 400, "InvalidJSON"),
        (b'{"text": "a"}', 400, "InvalidInput"),
        (b'{"inputs": []}', 400, "InvalidInput"),
        (
            json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}).encode(),
            400,
            "InvalidInput",
        ),
        (
            json.dumps({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}).encode(),
            400,
            "InvalidInput",
        ),
        (v2(["a", "b"], shape=[3]), 400, "InvalidInput"),
        (v2(["a"], shape=[-1]), 400, "InvalidInput"),
        (v2(["a"], shape=[True]), 400, "InvalidInput"),
        (v2([]), 400, "EmptyText"),
        (v2(["a", "b", "c", "d"]), 413, "TooManyTexts"),
        (v2(["a", 3]), 400, "InvalidInput"),
        (v2(["a"], id=5), 400, "InvalidInput"),
        (v2(["a"], outputs=[{"name": "logits"}]), 400, "InvalidInput"),
        (v2(["a"], extra=1), 400, "InvalidInput"),
        (v2(["abc \ud800"]), 400, "InvalidInput"),
    ],
)
def test_v2_refusals(body, status, kind):
    error = refused(body, OIP_V2)
    assert (error.status, error.kind) == (status, kind)


def test_deep_v2_data_is_refused_without_recursion():
    body = (
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": '
        + b"[" * 900
        + b'"a"'
        + b"]" * 900
        + b"}]}"
    )
    error = refused(body, OIP_V2)
    assert (error.status, error.kind) == (400, "InvalidInput")
    # data nested by rows as deep as a shape may have dimensions is read
    request, _ = parse({"body": v2([[[["a"]]], [[["b"]]]], shape=[2, 1, 1, 1])}, LIMITS, JSON, OIP_V2)
    assert request.texts == ("a", "b")


HUGE = int("9" * 4000)  # valid JSON, and Python parses it: 4,000 digits is under its 4,300


@pytest.mark.parametrize(
    "shape, status, kind",
    [
        ([HUGE] * 200, 400, "InvalidInput"),  # ~800 KB: seconds of math.prod before, then a 500
        ([1] * 9, 400, "InvalidInput"),  # more dimensions than a shape may have
        ([HUGE], 413, "TooManyTexts"),
        ([1, 1, HUGE], 413, "TooManyTexts"),
        ([0, HUGE], 413, "TooManyTexts"),  # holds no element, and still no product of it is taken
        ([-HUGE], 400, "InvalidInput"),
        ([2, 2], 413, "TooManyTexts"),  # each dimension within the limit, their product not
        ([4], 413, "TooManyTexts"),
        ([1.0], 400, "InvalidInput"),
        ([False], 400, "InvalidInput"),
        ([], 400, "InvalidInput"),
        ([[1]], 400, "InvalidInput"),
        ("1", 400, "InvalidInput"),
        (None, 400, "InvalidInput"),
    ],
)
def test_v2_shapes_are_checked_dimension_by_dimension_before_any_product(shape, status, kind, monkeypatch):
    import oip_v2

    products = []

    def prod(values):
        products.append(list(values))
        return math.prod(values)

    monkeypatch.setattr(oip_v2, "math", SimpleNamespace(prod=prod))
    error = refused(
        json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape, "data": ["a"]}]}).encode(), OIP_V2
    )
    assert (error.status, error.kind) == (status, kind)
    # a product is taken of a few dimensions within the limit only, never of what the client sent
    assert all(
        len(p) <= oip_v2.MAX_SHAPE_DIMS and all(0 <= d <= LIMITS.max_texts_per_request for d in p) for p in products
    )
    assert "999" not in error.message  # no request text (nor its numbers) in an error


class CountingList(list):
    """A JSON list (as TorchServe hands over a body it parsed) that counts what is read of it."""

    read = 0

    def __iter__(self):
        for item in super().__iter__():
            CountingList.read += 1
            yield item


def counting(value):
    if isinstance(value, list):
        return CountingList(counting(v) for v in value)
    if isinstance(value, dict):
        return {k: counting(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    "data, most",
    [
        (["a"] * 100_000, LIMITS.max_texts_per_request + 1),  # leaves past the shape's element count
        ([[]] * 100_000, None),  # empty rows: as many lists as data of an allowed shape has, and one more
        ([["a"] * 100_000], LIMITS.max_texts_per_request + 2),
    ],
)
def test_v2_data_is_read_only_as_far_as_the_shape_allows(data, most):
    import oip_v2

    most = most or (oip_v2.MAX_SHAPE_DIMS + 1) * LIMITS.max_texts_per_request + 1
    CountingList.read = 0
    body = {
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [LIMITS.max_texts_per_request], "data": counting(data)}
        ]
    }
    with pytest.raises(RequestError) as info:
        parse({"body": body}, LIMITS, JSON, OIP_V2)
    assert (info.value.status, info.value.kind) == (400, "InvalidInput")
    assert CountingList.read <= most


def test_v1_instances_over_the_limit_are_refused_before_any_is_read():
    CountingList.read = 0
    body = {"instances": counting([{"text": "a", "x": 1}] * 100_000)}
    with pytest.raises(RequestError) as info:
        parse({"body": body}, LIMITS, JSON, KSERVE_V1)
    assert (info.value.status, info.value.kind) == (413, "TooManyTexts")
    assert CountingList.read == 0


@pytest.mark.parametrize(
    "outputs",
    [
        [{"name": "label"}] * 2,
        [{"name": "label"}] * 100_000,  # each would be a tensor of the answer
        [{"name": "label"}, {"name": "score"}, {"name": "scores"}, {"name": "label"}],
        [{"name": ["label"]}],
        [{"name": {"label": 1}}],
        [],
    ],
)
def test_v2_outputs_are_asked_for_once_each(outputs):
    error = refused(v2(["a"], outputs=outputs), OIP_V2)
    assert (error.status, error.kind) == (400, "InvalidInput")


PREDICTIONS = [
    {"label": "positive", "score": 0.9, "scores": {"negative": 0.1, "positive": 0.9}},
    {"label": "negative", "score": 0.8, "scores": {"negative": 0.8, "positive": 0.2}},
]


def test_answers_in_each_protocol():
    labels = ["negative", "positive"]
    assert json.loads(render(Envelope(), PREDICTIONS[:1], labels, MODEL, is_list=False)[1]) == PREDICTIONS[0]
    assert json.loads(render(Envelope(KSERVE_V1), PREDICTIONS, labels, MODEL)[1]) == {"predictions": PREDICTIONS}
    status, body = render(Envelope(OIP_V2, "req-1"), PREDICTIONS, labels, MODEL)
    answer = json.loads(body)
    assert status == 200 and (answer["model_name"], answer["model_version"], answer["id"]) == (
        "sentiment",
        "1.0",
        "req-1",
    )
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"] == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["positive", "negative"]}
    assert outputs["score"]["datatype"] == "FP32" and outputs["score"]["data"] == [0.9, 0.8]
    assert outputs["scores"]["shape"] == [2, 2] and outputs["scores"]["data"] == [0.1, 0.9, 0.8, 0.2]
    only = json.loads(render(Envelope(OIP_V2, None, ("score",)), PREDICTIONS, labels, MODEL)[1])
    assert [o["name"] for o in only["outputs"]] == ["score"] and "id" not in only


def test_errors_in_each_protocols_shape():
    error = TooManyTexts("too many")
    assert json.loads(render(Envelope(), error, [], MODEL)[1]) == error.body()
    for protocol in (KSERVE_V1, OIP_V2):
        status, body = render(Envelope(protocol), error, [], MODEL)
        assert (status, json.loads(body)) == (413, {"error": "TooManyTexts: too many"})


def test_one_batch_of_three_protocols_through_the_handler(tiny_model_dir):
    from handler_helpers import initialized_handler, run_batch

    handler, context = initialized_handler(tiny_model_dir)
    alone = run_batch(handler, context, [({"body": b'{"text": "I love it"}'}, JSON)])[0][1]
    answers = run_batch(
        handler,
        context,
        [
            (
                {"body": b'{"instances": ["I love it", {"text": "I love it"}]}'},
                JSON,
                {"sentiment-protocol": "kserve-v1"},
            ),
            ({"body": b'{"text": "I love it"}'}, JSON),
            ({"body": v2(["I love it"], id="x")}, JSON, {"sentiment-protocol": "oip-v2"}),
            ({"body": b'{"instances": ['}, JSON, {"sentiment-protocol": "kserve-v1"}),
            ({"body": v2(["a"], shape=[4])}, JSON, {"sentiment-protocol": "oip-v2"}),
        ],
    )
    statuses = [a[0] for a in answers]
    assert statuses == [200, 200, 200, 400, 400]
    assert answers[0][1]["predictions"] == [alone, alone]
    assert answers[1][1] == alone
    v2_answer = answers[2][1]
    assert v2_answer["id"] == "x" and v2_answer["outputs"][0]["data"] == [alone["label"]]
    assert v2_answer["outputs"][1]["data"] == [alone["score"]]
    assert answers[3][1] == {"error": answers[3][1]["error"]} and answers[3][1]["error"].startswith("InvalidJSON")
    assert answers[4][1]["error"].startswith("InvalidInput")
