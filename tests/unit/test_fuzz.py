"""Property-based tests: whatever a request's bytes, it is answered alone.

Hypothesis generates arbitrary bytes, JSON of any shape and depth, any unicode (lone
surrogates included) and any Content-Type. The pure functions must either accept a
request (texts that are real, non-empty UTF-8 text within the limits) or refuse it with a
4xx RequestError; nothing else may escape. KServe v1 and OIP v2 envelopes get hostile
fields of their own (shapes of huge, negative, boolean or fractional dimensions and too
many of them, data nested deep or wide, ids, datatypes, outputs), and their parsing may
take no product of what a client sent. The handler, on a tiny model, on PyTorch and on
the shipped ONNX Runtime int8 backend, must answer every request of a batch that mixes
such requests with good ones of every protocol: each with what its parsing calls for,
and the good ones exactly as when they are sent alone; and whatever becomes of such
requests, no text of theirs and no key reaches a log record, at any level
(tests/integration/test_logs.py checks the files of a real TorchServe and gateway).

CI runs a bounded number of examples; run longer by hand with
`HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests -k fuzz`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from types import SimpleNamespace
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bodies import Limits, ParsedRequest
from contract import KSERVE_V1, NATIVE, OIP_V2
from errors import RequestError
from protocols import parse
from text_classification import run_isolated

LIMITS = Limits(max_texts_per_request=4, max_text_chars=200)
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            None,
            "",
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "text/html",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/vnd.api+json",
            "application/xml",
            "image/png",
            "application/octet-stream",
        ]
    ),
    st.text(max_size=40),
)
# any unicode, with extra weight on what breaks text handling: lone surrogates (JSON
# carries them as \ud800 escapes), NUL, BOM, bidi overrides, combining marks, emoji
AWKWARD = st.sampled_from(["\ud800", "\udfff", "\udc00x", "\x00", "\ufeff", "\u202e", "\u0301", "😍", "\r\n"])
ANY_TEXT = st.one_of(
    st.text(alphabet=st.characters(codec=None), max_size=60),
    st.lists(st.one_of(AWKWARD, st.characters(codec=None)), max_size=20).map("".join),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | ANY_TEXT,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(ANY_TEXT, children, max_size=6),
    max_leaves=30,
)
TEXT_FIELDS = st.one_of(ANY_TEXT, st.lists(ANY_TEXT, max_size=6), JSON_VALUES)


@st.composite
def deeply_nested(draw) -> bytes:
    depth = draw(st.integers(min_value=1, max_value=200_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('{"text":[', "]}")]))
    return (opener * depth + closer * draw(st.integers(0, depth))).encode()


# KServe v1 and OIP v2 envelopes around any values
V1_BODIES = st.fixed_dictionaries(
    {"instances": st.one_of(st.lists(st.one_of(ANY_TEXT, JSON_VALUES), max_size=6), JSON_VALUES)}
)
V2_TENSORS = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["text", "input", ""]),
        "datatype": st.sampled_from(["BYTES", "FP32", 3]),
        "shape": st.one_of(st.lists(st.integers(-2, 8), max_size=3), JSON_VALUES),
        "data": st.one_of(
            st.lists(st.one_of(ANY_TEXT, st.lists(ANY_TEXT, max_size=3), JSON_VALUES), max_size=6), JSON_VALUES
        ),
    }
)
V2_BODIES = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(V2_TENSORS, max_size=2), JSON_VALUES)},
    optional={"id": JSON_VALUES, "outputs": JSON_VALUES, "parameters": JSON_VALUES},
)

# Hostile envelopes: the right fields with what the protocols' parsing must refuse without
# doing work in proportion to it (issue 19), and now and then a good request.
HUGE_INTS = st.integers(1, 4200).map(lambda digits: int("9" * digits))  # JSON, and Python still parses it
DIMENSIONS = st.one_of(
    st.integers(-3, 40),
    HUGE_INTS,
    HUGE_INTS.map(lambda n: -n),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
    ANY_TEXT,
)
HOSTILE_SHAPES = st.one_of(
    st.lists(DIMENSIONS, max_size=12),
    st.tuples(st.integers(1, 300), HUGE_INTS).map(lambda p: [p[1]] * p[0]),  # seconds of math.prod, once
    st.lists(st.integers(0, 3), min_size=1, max_size=20),  # many small dimensions
    JSON_VALUES,
)


def _nested(depth: int, leaf: str) -> str:
    return "[" * depth + leaf + "]" * depth


# Nesting that every parser here reads, or that none does: json's C scanner counts against
# the recursion limit, which Hypothesis lifts by some 2,000 frames while a test runs, so a
# depth near that would parse in the test's own call and not in the handler's deeper stack.
NESTING = st.one_of(st.integers(1, 500), st.integers(5_000, 20_000))


HOSTILE_DATA = st.one_of(  # as JSON text: nesting deeper than json.dumps would write
    st.lists(st.one_of(ANY_TEXT, JSON_VALUES, st.lists(ANY_TEXT, max_size=3)), max_size=8).map(json.dumps),
    st.tuples(NESTING, st.lists(ANY_TEXT, max_size=3)).map(lambda p: _nested(p[0], json.dumps(p[1]))),
    st.integers(0, 5_000).map(lambda n: json.dumps([[]] * n)),  # rows without elements
    st.integers(0, 5_000).map(lambda n: json.dumps(["a"] * n)),  # elements past any shape
    st.integers(0, 200).map(lambda n: json.dumps([["a"] * 40] * n)),
    JSON_VALUES.map(json.dumps),
)
IDS = st.one_of(ANY_TEXT, JSON_VALUES, HUGE_INTS, st.integers(1, 100_000).map(lambda n: "i" * n))
V2_OUTPUT_NAMES = st.sampled_from(["label", "score", "scores"])
OUTPUTS = st.one_of(
    st.lists(
        st.fixed_dictionaries({"name": st.one_of(V2_OUTPUT_NAMES, JSON_VALUES)}, optional={"parameters": JSON_VALUES}),
        max_size=6,
    ),
    st.lists(V2_OUTPUT_NAMES, min_size=1, max_size=3, unique=True).map(lambda ns: [{"name": n} for n in ns]),
    st.integers(0, 10_000).map(lambda n: [{"name": "label"}] * n),  # a tensor of the answer each
    JSON_VALUES,
)
DATA_MARK = "__data__"


def _v2_body(name, datatype, shape, data: str, extra: dict) -> bytes:
    tensor = {"name": name, "datatype": datatype, "shape": shape, "data": DATA_MARK}
    return json.dumps({"inputs": [tensor], **extra}).replace(json.dumps(DATA_MARK), data, 1).encode()


def _good_v2(texts: list[str], layout: str) -> tuple[list, object]:
    n = len(texts)
    return {
        "flat": ([n], texts),
        "rows": ([n, 1], [[t] for t in texts]),
        "one row": ([1, n], [texts]),
        "flat in 2-d": ([n, 1], texts),
    }[layout]


GOOD_TEXTS = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "Zs"]), min_size=1, max_size=40
).filter(str.strip)
V2_GOOD = st.tuples(
    st.lists(GOOD_TEXTS, min_size=1, max_size=LIMITS.max_texts_per_request),
    st.sampled_from(["flat", "rows", "one row", "flat in 2-d"]),
).map(lambda p: _good_v2(*p))
V2_HOSTILE = st.one_of(
    st.builds(
        _v2_body,
        st.one_of(st.just("text"), st.just("text"), st.sampled_from(["", "input", "TEXT"]), JSON_VALUES),
        st.one_of(st.just("BYTES"), st.just("BYTES"), st.sampled_from(["FP32", "bytes", "STRING"]), JSON_VALUES),
        HOSTILE_SHAPES,
        HOSTILE_DATA,
        st.fixed_dictionaries({}, optional={"id": IDS, "outputs": OUTPUTS, "parameters": JSON_VALUES}),
    ),
    st.builds(
        lambda good, extra: _v2_body("text", "BYTES", good[0], json.dumps(good[1]), extra),
        V2_GOOD,
        st.fixed_dictionaries({}, optional={"id": IDS, "outputs": OUTPUTS}),
    ),
)
V1_INSTANCES = st.one_of(
    ANY_TEXT,
    GOOD_TEXTS,
    HUGE_INTS,
    JSON_VALUES,
    st.lists(ANY_TEXT, max_size=3),
    st.fixed_dictionaries({"text": st.one_of(GOOD_TEXTS, ANY_TEXT, JSON_VALUES)}, optional={"x": JSON_VALUES}),
)
V1_HOSTILE = st.one_of(
    st.fixed_dictionaries(
        {
            "instances": st.one_of(
                st.lists(V1_INSTANCES, max_size=8), st.integers(0, 5_000).map(lambda n: ["a"] * n), JSON_VALUES
            )
        },
        optional={"parameters": JSON_VALUES, "id": JSON_VALUES},
    ).map(lambda v: json.dumps(v).encode()),
    st.tuples(NESTING, GOOD_TEXTS).map(lambda p: b'{"instances": ' + _nested(p[0], json.dumps(p[1])).encode() + b"}"),
)

BODIES = st.one_of(
    st.binary(max_size=300),
    V1_BODIES.map(lambda v: json.dumps(v).encode()),
    V2_BODIES.map(lambda v: json.dumps(v).encode()),
    V1_HOSTILE,
    V2_HOSTILE,
    ANY_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    TEXT_FIELDS.map(lambda v: json.dumps({"text": v}).encode()),
    st.dictionaries(ANY_TEXT, TEXT_FIELDS, max_size=3).map(lambda d: json.dumps(d).encode()),
    st.integers(min_value=4000, max_value=20_000).map(lambda n: b'{"text": ' + b"7" * n + b"}"),
    deeply_nested(),
)
ROWS = st.one_of(
    BODIES.map(lambda b: {"body": b}),
    BODIES.map(lambda b: {"body": bytearray(b)}),
    ANY_TEXT.map(lambda t: {"body": t}),  # TorchServe decoded the body to str
    JSON_VALUES.map(lambda v: {"body": v}),  # TorchServe parsed the JSON itself
    BODIES.map(lambda b: {"data": b}),
    st.one_of(ANY_TEXT, st.binary(max_size=100)).map(lambda t: {"text": t}),
    st.dictionaries(st.sampled_from(["a", "text", "body", "data", "x"]), st.binary(max_size=50), max_size=3),
)


def is_valid_request(parsed: ParsedRequest) -> bool:
    return (
        1 <= len(parsed.texts) <= LIMITS.max_texts_per_request
        and (parsed.is_list or len(parsed.texts) == 1)
        and all(
            isinstance(t, str) and t.strip() and len(t) <= LIMITS.max_text_chars and t.encode("utf-8")
            for t in parsed.texts
        )
    )


PROTOCOLS = st.sampled_from([NATIVE, KSERVE_V1, OIP_V2])


@given(row=ROWS, content_type=CONTENT_TYPES, protocol=PROTOCOLS)
def test_fuzz_parse_accepts_text_or_refuses_with_a_4xx_in_every_protocol(row, content_type, protocol):
    try:
        parsed, _ = parse(row, LIMITS, content_type, protocol)
    except RequestError as e:
        assert 400 <= e.status < 500, e.body()
        assert json.loads(json.dumps(e.body())) == e.body()
        assert e.kind and e.message
        return
    assert is_valid_request(parsed), parsed


@given(items=st.lists(st.integers(), max_size=20), poison=st.sets(st.integers()))
def test_fuzz_run_isolated_fails_only_the_poisoned_items(items, poison):
    calls = []

    def run(group):
        calls.append(list(group))
        if any(i in poison for i in group):
            raise ValueError("poisoned")
        return [i * 2 for i in group]

    results = run_isolated(items, run)
    assert len(results) == len(items)
    for item, result in zip(items, results, strict=True):
        if item in poison:
            assert isinstance(result, ValueError)
        else:
            assert result == item * 2
    assert len(calls) <= 1 + len(items)


ENVELOPES = st.one_of(st.tuples(V1_HOSTILE, st.just(KSERVE_V1)), st.tuples(V2_HOSTILE, st.just(OIP_V2)))


@given(envelope=ENVELOPES, content_type=st.sampled_from([None, "application/json", "application/json; charset=utf-8"]))
def test_fuzz_v1_v2_envelopes_are_parsed_or_refused_within_their_limits(envelope, content_type):
    """Hostile v1 and v2 envelopes in their own protocol: texts within the limits or a 4xx,
    and a product of a few small dimensions at most on the way (never of a client's shape)."""
    import oip_v2

    body, protocol = envelope
    products = []

    def prod(values):
        products.append(list(values))
        return math.prod(values)

    with mock.patch.object(oip_v2, "math", SimpleNamespace(prod=prod)):
        try:
            parsed, returned = parse({"body": body}, LIMITS, content_type, protocol)
        except RequestError as e:
            assert 400 <= e.status < 500, e.body()
            assert e.kind and e.message
            parsed = None
    assert all(
        len(p) <= oip_v2.MAX_SHAPE_DIMS and all(0 <= d <= LIMITS.max_texts_per_request for d in p) for p in products
    )
    if parsed is not None:
        assert is_valid_request(parsed), parsed
        assert returned.protocol == protocol
        assert len(set(returned.outputs)) == len(returned.outputs) <= 3


def test_run_isolated_treats_a_wrong_number_of_results_as_a_failure():
    results = run_isolated([1, 2], lambda group: [0] if len(group) > 1 else [group[0]])
    assert results == [1, 2]


# The handler on the tiny model: hostile rows mixed with good ones in one batch.

GOOD = ["I love this", "This is terrible", "ok I guess"]


@pytest.fixture(scope="module", params=["torch", "onnxruntime-int8"])
def tiny_handler(request, tiny_model_dir, onnx_model_dir):
    """The handler on the tiny model, on PyTorch and on the shipped backend: ONNX Runtime
    int8, one text per forward pass (model-config.yaml)."""
    from handler_helpers import initialized_handler

    options = {"max_texts_per_request": LIMITS.max_texts_per_request, "max_text_chars": LIMITS.max_text_chars}
    if request.param == "torch":
        return initialized_handler(tiny_model_dir, options)
    return initialized_handler(
        onnx_model_dir["int8"], {**options, "backend": "onnxruntime", "quantize": "int8", "micro_batch_size": 1}
    )


HEADERS = st.one_of(
    st.just({}),
    PROTOCOLS.map(lambda p: {"sentiment-protocol": p}),
    st.just({"explain": "True"}),
    st.dictionaries(st.sampled_from(["sentiment-protocol", "explain", "x"]), st.text(max_size=12)),
)


@given(hostile=st.lists(st.tuples(ROWS, CONTENT_TYPES, HEADERS), min_size=1, max_size=6), seed=st.randoms())
@settings(max_examples=int(os.environ.get("FUZZ_HANDLER_EXAMPLES", "60")))
def test_fuzz_handler_answers_good_requests_whatever_is_batched_with_them(tiny_handler, hostile, seed):
    from handler_helpers import run_batch

    handler, context = tiny_handler
    good = [({"body": json.dumps({"text": t}).encode()}, "application/json") for t in GOOD]
    alone = {t: run_batch(handler, context, [row])[0] for t, row in zip(GOOD, good, strict=True)}
    rows = [("good", t, row) for t, row in zip(GOOD, good, strict=True)] + [("hostile", None, r) for r in hostile]
    seed.shuffle(rows)
    answers = run_batch(handler, context, [row for _, _, row in rows])
    for (kind, text, _), (status, body, content_type) in zip(rows, answers, strict=True):
        assert content_type == "application/json"
        if kind == "good":
            assert status == 200 and body == alone[text][1]
        elif status != 200:
            # hostile bytes are the client's fault, never a 5xx
            assert 400 <= status < 500, body
            assert (body.get("code") == status and body["type"] and body["message"]) or set(body) == {"error"}


GOOD_ENVELOPES = [
    (
        {"body": json.dumps({"instances": ["I love this", {"text": "so bad"}]}).encode()},
        "application/json",
        {"sentiment-protocol": KSERVE_V1},
    ),
    (
        {
            "body": json.dumps(
                {
                    "id": "7",
                    "inputs": [
                        {
                            "name": "text",
                            "datatype": "BYTES",
                            "shape": [2, 1],
                            "data": [["ok I guess"], ["This is terrible"]],
                        }
                    ],
                }
            ).encode()
        },
        "application/json",
        {"sentiment-protocol": OIP_V2},
    ),
]


@given(hostile=st.lists(ENVELOPES, min_size=1, max_size=6), seed=st.randoms())
@settings(max_examples=int(os.environ.get("FUZZ_HANDLER_EXAMPLES", "60")))
def test_fuzz_handler_answers_each_v1_v2_envelope_alone(tiny_handler, hostile, seed):
    """Hostile v1 and v2 envelopes in a batch with good requests of all three protocols:
    every request gets its own answer, the one its parsing calls for: predictions for
    each of its texts, or its refusal (4xx) in its protocol's error shape; the good ones
    exactly what they get alone; no 5xx."""
    from handler_helpers import run_batch

    handler, context = tiny_handler
    good = [({"body": json.dumps({"text": t}).encode()}, "application/json") for t in GOOD] + GOOD_ENVELOPES
    alone = [run_batch(handler, context, [row])[0] for row in good]
    rows = [("good", alone[i], row) for i, row in enumerate(good)]
    rows += [
        ("hostile", protocol, ({"body": body}, "application/json", {"sentiment-protocol": protocol}))
        for body, protocol in hostile
    ]
    seed.shuffle(rows)
    answers = run_batch(handler, context, [row for _, _, row in rows])
    for (kind, expected, row), (status, body, content_type) in zip(rows, answers, strict=True):
        assert content_type == "application/json"
        if kind == "good":
            assert status == 200 and (status, body, content_type) == expected
            continue
        try:
            parsed, envelope = parse(row[0], LIMITS, row[1], expected)
        except RequestError as e:
            assert (status, body) == (e.status, {"error": f"{e.kind}: {e.message}"})
            continue
        assert status == 200, body
        if expected == KSERVE_V1:
            assert len(body["predictions"]) == len(parsed.texts)
        else:
            assert [o["name"] for o in body["outputs"]] == list(envelope.outputs)
            assert all(o["shape"][0] == len(parsed.texts) for o in body["outputs"])
            assert body.get("id") == envelope.request_id


# the same kinds of bodies, each carrying a marked text where a parser, a tokenizer or an
# error message would meet it: the mark must reach no log record, whatever becomes of it
MARK = "zebra-umbrella-confidential"
MARKED = ANY_TEXT.map(lambda t: t + MARK)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


MARKED_BODIES = st.one_of(
    MARKED.map(lambda t: json.dumps({"text": t}).encode()),
    st.tuples(MARKED, JSON_VALUES).map(lambda p: json.dumps({"text": [p[0], p[1]]}).encode()),
    st.tuples(MARKED, JSON_VALUES).map(lambda p: json.dumps({p[0]: p[1]}).encode()),
    MARKED.map(lambda t: json.dumps({"text": t * 40}).encode()),
    MARKED.map(lambda t: json.dumps({"instances": [t, 3]}).encode()),
    MARKED.map(
        lambda t: json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": [t]}]}).encode()
    ),
    st.tuples(MARKED, st.binary(max_size=40)).map(lambda p: _utf8(p[0]) + p[1]),
    st.tuples(st.binary(max_size=20), MARKED).map(lambda p: p[0] + _utf8(p[1])),
    MARKED.map(lambda t: b"text=" + _utf8(t) + b"%ZZ"),
    st.tuples(MARKED, st.integers(1, 20_000)).map(
        lambda p: b'{"text": ' + json.dumps(p[0]).encode() + b', "x": ' + b"[" * p[1] + b"}"
    ),
)


class Records(logging.Handler):
    def __init__(self):
        super().__init__(level=0)
        self.texts = []

    def emit(self, record):
        self.texts.append(self.format(record))  # the message and any exception with its traceback


@given(
    hostile=st.lists(
        st.tuples(MARKED_BODIES.map(lambda b: {"body": b}), CONTENT_TYPES, HEADERS), min_size=1, max_size=4
    ),
    seed=st.randoms(),
)
@settings(max_examples=int(os.environ.get("FUZZ_HANDLER_EXAMPLES", "60")))
def test_fuzz_no_request_text_and_no_key_reaches_a_log(tiny_handler, hostile, seed):
    from handler_helpers import run_batch

    handler, context = tiny_handler
    good = [({"body": json.dumps({"text": f"{t} {MARK}"}).encode()}, "application/json") for t in GOOD]
    rows = good + hostile
    seed.shuffle(rows)
    root = logging.getLogger()
    records, level = Records(), root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    try:
        run_batch(handler, context, rows)
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    logged = "\n".join(records.texts)
    for piece in ("zebra", "umbrella", "confidential", "not-for-logs"):  # not-for-logs: run_batch's key
        assert piece not in logged
