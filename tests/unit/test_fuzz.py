"""Property-based tests: whatever a request's bytes, it is answered alone.

Hypothesis generates arbitrary bytes, JSON of any shape and depth, any unicode (lone
surrogates included) and any Content-Type. The pure functions must either accept a
request (texts that are real, non-empty UTF-8 text within the limits) or refuse it with a
4xx RequestError; nothing else may escape. The handler, on a tiny model, must answer every
request of a batch that mixes such requests with good ones, and the good ones exactly as
when they are sent alone; and whatever becomes of such requests, no text of theirs and no
key reaches a log record, at any level (tests/integration/test_logs.py checks the files
of a real TorchServe and gateway).

CI runs a bounded number of examples; run longer by hand with
`HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests -k fuzz`.
"""

from __future__ import annotations

import json
import logging
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocols import KSERVE_V1, NATIVE, OIP_V2, parse
from text_classification import Limits, ParsedRequest, RequestError, run_isolated

settings.register_profile("ci", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

LIMITS = Limits(max_texts_per_request=4, max_text_chars=200)
CONTENT_TYPES = st.one_of(
    st.sampled_from([None, "", "application/json", "application/json; charset=utf-8", "text/plain",
                     "text/html", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                     "application/vnd.api+json", "application/xml", "image/png", "application/octet-stream"]),
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
V1_BODIES = st.fixed_dictionaries({"instances": st.one_of(st.lists(st.one_of(ANY_TEXT, JSON_VALUES), max_size=6),
                                                          JSON_VALUES)})
V2_TENSORS = st.fixed_dictionaries({
    "name": st.sampled_from(["text", "input", ""]), "datatype": st.sampled_from(["BYTES", "FP32", 3]),
    "shape": st.one_of(st.lists(st.integers(-2, 8), max_size=3), JSON_VALUES),
    "data": st.one_of(st.lists(st.one_of(ANY_TEXT, st.lists(ANY_TEXT, max_size=3), JSON_VALUES), max_size=6),
                      JSON_VALUES)})
V2_BODIES = st.fixed_dictionaries({"inputs": st.one_of(st.lists(V2_TENSORS, max_size=2), JSON_VALUES)},
                                  optional={"id": JSON_VALUES, "outputs": JSON_VALUES, "parameters": JSON_VALUES})

BODIES = st.one_of(
    st.binary(max_size=300),
    V1_BODIES.map(lambda v: json.dumps(v).encode()),
    V2_BODIES.map(lambda v: json.dumps(v).encode()),
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
    return (1 <= len(parsed.texts) <= LIMITS.max_texts_per_request
            and (parsed.is_list or len(parsed.texts) == 1)
            and all(isinstance(t, str) and t.strip() and len(t) <= LIMITS.max_text_chars
                    and t.encode("utf-8") for t in parsed.texts))


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
    for item, result in zip(items, results):
        if item in poison:
            assert isinstance(result, ValueError)
        else:
            assert result == item * 2
    assert len(calls) <= 1 + len(items)


def test_run_isolated_treats_a_wrong_number_of_results_as_a_failure():
    results = run_isolated([1, 2], lambda group: [0] if len(group) > 1 else [group[0]])
    assert results == [1, 2]


# The handler on the tiny model: hostile rows mixed with good ones in one batch.

GOOD = ["I love this", "This is terrible", "ok I guess"]


@pytest.fixture(scope="module")
def tiny_handler(tiny_model_dir):
    from test_handler import initialized_handler

    return initialized_handler(tiny_model_dir, {"max_texts_per_request": 4, "max_text_chars": 200})


HEADERS = st.one_of(st.just({}), PROTOCOLS.map(lambda p: {"sentiment-protocol": p}), st.just({"explain": "True"}),
                     st.dictionaries(st.sampled_from(["sentiment-protocol", "explain", "x"]), st.text(max_size=12)))


@given(hostile=st.lists(st.tuples(ROWS, CONTENT_TYPES, HEADERS), min_size=1, max_size=6), seed=st.randoms())
@settings(max_examples=int(os.environ.get("FUZZ_HANDLER_EXAMPLES", "60")))
def test_fuzz_handler_answers_good_requests_whatever_is_batched_with_them(tiny_handler, hostile, seed):
    from test_handler import run_batch

    handler, context = tiny_handler
    good = [({"body": json.dumps({"text": t}).encode()}, "application/json") for t in GOOD]
    alone = {t: run_batch(handler, context, [row])[0] for t, row in zip(GOOD, good)}
    rows = [("good", t, row) for t, row in zip(GOOD, good)] + [("hostile", None, r) for r in hostile]
    seed.shuffle(rows)
    answers = run_batch(handler, context, [row for _, _, row in rows])
    for (kind, text, _), (status, body, content_type) in zip(rows, answers):
        assert content_type == "application/json"
        if kind == "good":
            assert status == 200 and body == alone[text][1]
        elif status != 200:
            # hostile bytes are the client's fault, never a 5xx
            assert 400 <= status < 500, body
            assert (body.get("code") == status and body["type"] and body["message"]) or set(body) == {"error"}


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
    MARKED.map(lambda t: json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                                 "data": [t]}]}).encode()),
    st.tuples(MARKED, st.binary(max_size=40)).map(lambda p: _utf8(p[0]) + p[1]),
    st.tuples(st.binary(max_size=20), MARKED).map(lambda p: p[0] + _utf8(p[1])),
    MARKED.map(lambda t: b"text=" + _utf8(t) + b"%ZZ"),
    st.tuples(MARKED, st.integers(1, 20_000)).map(
        lambda p: b'{"text": ' + json.dumps(p[0]).encode() + b', "x": ' + b"[" * p[1] + b"}"),
)


class Records(logging.Handler):
    def __init__(self):
        super().__init__(level=0)
        self.texts = []

    def emit(self, record):
        self.texts.append(self.format(record))  # the message and any exception with its traceback


@given(hostile=st.lists(st.tuples(MARKED_BODIES.map(lambda b: {"body": b}), CONTENT_TYPES, HEADERS),
                        min_size=1, max_size=4), seed=st.randoms())
@settings(max_examples=int(os.environ.get("FUZZ_HANDLER_EXAMPLES", "60")))
def test_fuzz_no_request_text_and_no_key_reaches_a_log(tiny_handler, hostile, seed):
    from test_handler import run_batch

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
