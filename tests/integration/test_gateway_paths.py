"""One path per route: what TorchServe runs is the API the gateway's route names, whatever
bytes the path holds.

Paths go over raw sockets (an HTTP client library normalises `..`, `%2e` and `//` before
sending, so it could not test this), against the real nginx in front of the real
TorchServe with the default model. Hypothesis builds paths from the API's own segments,
dot segments, empty segments, `;` parameters and percent-encodings of any of their
bytes; a reference classifier written here (independently of the template) says which
route a path is. The properties: only a path that is exactly a route's form is answered
200, its answer has that route's shape, and an explanation is only ever the answer of
`/explanations/sentiment`; every other path is refused by the gateway before TorchServe.
"""

from __future__ import annotations

import json
import os
import re
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import gateway_in_front, metric, metric_samples

KEY = "paths-client-key-" + "p" * 47  # 64 characters, as `openssl rand -hex 32` makes
CLIENTS = {"paths": KEY}
MODEL = "sentiment"
SEGMENTS = [
    "predictions",
    "explanations",
    MODEL,
    "sentiment:predict",
    "v1",
    "v2",
    "models",
    "versions",
    "infer",
    "ready",
    "1.0",
    "2.0",
    "ping",
    "api-description",
    "metrics",
    "token",
    "health",
    ".",
    "..",
    "",
    "x;y=1",
    "sentiment;v=1",
    "%00",
    "a b",
    "\\",
]
ENCODED = {"/": ["%2f", "%2F", "%252f"], ".": ["%2e", "%2E"], "s": ["%73"], "p": ["%70"], ";": ["%3b"]}

# The reference classifier: a route's exact forms, nothing else.
ROUTES = [
    (re.compile(rf"/predictions/{MODEL}(/[0-9A-Za-z._-]+)?"), "predictions"),
    (re.compile(rf"/explanations/{MODEL}"), "explanations"),
    (re.compile(rf"/v1/models/{MODEL}:predict"), "v1"),
    (re.compile(rf"/v2/models/{MODEL}(/versions/[0-9A-Za-z._-]+)?/infer"), "v2"),
]


def expected_route(path: str) -> str | None:
    segments = path.split("/")[1:]
    if any(s in ("", ".", "..") for s in segments) or not re.fullmatch(r"/[0-9A-Za-z._:/-]*", path):
        return None
    for pattern, route in ROUTES:
        if pattern.fullmatch(path):
            return route
    return None


def answer_route(body: dict) -> str:
    """Which API an answer came from, by its shape."""
    if "predictions" in body:
        return "v1"
    if "outputs" in body:
        return "v2"
    if "explanation" in body:
        return "explanations"
    if "label" in body:
        return "predictions"
    return "unknown"


@st.composite
def paths(draw) -> str:
    if draw(st.booleans()):  # near a real route: one of its forms, then mutated
        base = draw(
            st.sampled_from(
                [
                    f"/predictions/{MODEL}",
                    f"/predictions/{MODEL}/1.0",
                    f"/explanations/{MODEL}",
                    f"/v1/models/{MODEL}:predict",
                    f"/v2/models/{MODEL}/infer",
                    f"/v2/models/{MODEL}/versions/1.0/infer",
                ]
            )
        )
        parts = base.split("/")[1:]
    else:
        parts = draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=6))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(parts)))
        parts.insert(i, draw(st.sampled_from(["..", ".", "", "explanations", MODEL, "%2e%2e", "predictions"])))
    path = "/" + "/".join(parts)
    for _ in range(draw(st.integers(0, 3))):  # percent-encode some characters
        chars = [i for i, c in enumerate(path) if c in ENCODED]
        if not chars:
            break
        i = draw(st.sampled_from(chars))
        path = path[:i] + draw(st.sampled_from(ENCODED[path[i]])) + path[i + 1 :]
    if draw(st.integers(0, 9)) == 0:
        path = path.replace("/", "//", 1)
    for _ in range(draw(st.integers(0, 2))):  # a letter in the other case: another path
        letters = [i for i, c in enumerate(path) if c.isalpha()]
        if letters:
            i = draw(st.sampled_from(letters))
            path = path[:i] + path[i].swapcase() + path[i + 1 :]
    return path


# Header lines a request may carry beside its own: none, or one with control bytes in its
# name or value (what nginx, Netty and the handler each parse their own way)
CONTROL = "".join(map(chr, [*range(0, 9), *range(10, 32), 127]))
junk_headers = st.one_of(
    st.just(""),
    st.builds(lambda c, v: f"X-Junk{c}: {v}\r\n", st.sampled_from(CONTROL), st.text("ab", max_size=3)),
    st.builds(lambda c, v: f"X-Junk: {v}{c}{v}\r\n", st.sampled_from(CONTROL.replace("\x00", "")), st.text("ab")),
    st.builds(lambda c: f"Accept:{c}application/json\r\n", st.sampled_from(CONTROL)),
)


def raw_post(port: int, path: str, body: bytes, junk: str = "") -> tuple[int, bytes]:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\n{junk}Authorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", payload
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2 :]
        payload = out
    return status, payload


@pytest.fixture(scope="module")
def gateway(server, tmp_path_factory):
    with gateway_in_front(server, tmp_path_factory.mktemp("paths-gateway"), CLIENTS) as gw:
        yield gw


@settings(
    max_examples=int(os.environ.get("PATH_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=paths(), junk=junk_headers)
def test_the_api_that_answers_is_the_one_the_route_names(gateway, path, junk):
    status, body = raw_post(gateway.settings.port, path, b'{"text": "I love this"}', junk)
    route = expected_route(path)
    if junk and status == 400:
        assert json.loads(body)["type"] in ("BadRequest", "InvalidPath"), (path, junk, body[:200])
        return  # nginx refused the header line, before any route
    if route is None:
        assert status in (400, 404), (path, status, body[:200])
        kind = json.loads(body).get("type")
        assert kind in ("InvalidPath", "NotFound", "BadRequest"), (path, body[:200])
        return
    if route == "v1":
        status, body = raw_post(gateway.settings.port, path, b'{"instances": ["I love this"]}', junk)
    elif route == "v2":
        status, body = raw_post(
            gateway.settings.port,
            path,
            json.dumps(
                {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["I love this"]}]}
            ).encode(),
            junk,
        )
    if status == 404 and re.fullmatch(rf"/predictions/{MODEL}/[^/]+|/v2/models/{MODEL}/versions/[^/]+/infer", path):
        assert b"ersion" in body, (path, body[:200])
        return  # a version TorchServe does not have: its own 404, and no other API ran
    assert status == 200, (path, status, body[:200])
    assert answer_route(json.loads(body)) == route, (path, body[:200])


def test_dot_segments_never_reach_an_explanation(gateway, server):
    """The path that used to be routed as a prediction and run as an explanation."""
    with gateway.poller.paused():  # its probes would count: the count is of this test's requests
        before = metric(metric_samples(server), "ts_inference_requests_total")
        for path in (
            f"/predictions/{MODEL}/../../explanations/{MODEL}",
            f"/predictions/{MODEL}/%2e%2e/x",
            f"/predictions/{MODEL}/..%2fexplanations",
            f"/predictions/{MODEL};/../../explanations/{MODEL}",
            f"/predictions//{MODEL}",
            f"/predictions/{MODEL}/./",
            "/predictions/../ping",
        ):
            status, body = raw_post(gateway.settings.port, path, b'{"text": "I love this"}')
            assert status == 400 and json.loads(body)["type"] == "InvalidPath", (path, status, body)
        assert metric(metric_samples(server), "ts_inference_requests_total") == before


def test_the_headers_the_handler_reads_are_the_gateways_on_every_route(gateway):
    """A client's sentiment-protocol, explain and describe headers change nothing: the
    route alone says which protocol the handler answers in, and a prediction stays one."""
    hostile = {"sentiment-protocol": "oip-v2", "explain": "True", "describe": "True", "sentiment-client": "other"}
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **hostile}
    port = gateway.settings.port

    def post(path, body):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            head = "".join(f"{k}: {v}\r\n" for k, v in auth.items())
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), json.loads(payload)

    status, body = post(f"/predictions/{MODEL}", b'{"text": "I love this"}')
    assert status == 200 and answer_route(body) == "predictions" and set(body) == {"label", "score", "scores"}
    for name, value in (("sentiment-protocol", "native"), ("sentiment-protocol", "kserve-v1")):
        auth[name] = value
        status, body = post(
            f"/v2/models/{MODEL}/infer",
            json.dumps(
                {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["I love this"]}]}
            ).encode(),
        )
        assert status == 200 and answer_route(body) == "v2", body
        status, body = post(f"/v1/models/{MODEL}:predict", b'{"instances": ["I love this"]}')
        assert status == 200 and answer_route(body) == "v1", body
