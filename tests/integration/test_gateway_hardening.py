"""The gateway as the front door: timeouts, connection caps, only the API's methods and
paths, answers in order, HTTP/1.0 and Connection: close, forms refused, no API
description, and a node's own error answers never taking it out of rotation.

Real nginx in front of real TorchServe nodes, spoken to over raw sockets where the test
is about the bytes on the wire."""

from __future__ import annotations

import base64
import json
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from gateway.nginx import node_socket
from helpers import (
    closed_by_server,
    gateway_answers,
    gateway_in_front,
    log_length,
    metric,
    metric_samples,
    poll,
    read_response,
    settled,
    tiny_node,
)
from testbed.local_server import models_setting
from training.tweets import split_tweets

CLIENTS = {"alice": "alice-key-0123456789", "bob": "bob-key-4567890123"}
CLIENT_TIMEOUT, IDLE_TIMEOUT, CONN_PER_KEY = 2, 3, 4


@pytest.fixture(scope="module")
def front(server, tmp_path_factory):
    """The gateway, with short timeouts and a small cap per key, in front of the shared server."""
    with gateway_in_front(
        server,
        tmp_path_factory.mktemp("front"),
        CLIENTS,
        client_timeout_s=CLIENT_TIMEOUT,
        idle_timeout_s=IDLE_TIMEOUT,
        conn_per_key=CONN_PER_KEY,
    ) as gateway:
        yield gateway, server


def connect(gateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.settings.port), timeout=30)


def request_bytes(body: bytes, key=CLIENTS["alice"], version="1.1", extra="", path="/predictions/sentiment") -> bytes:
    return (
        f"POST {path} HTTP/{version}\r\nHost: gateway\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def ask(gateway, key=CLIENTS["alice"], content_type=None, **kwargs):
    kwargs.setdefault("json", {"text": "I love this"})
    headers = {"Authorization": f"Bearer {key}"}
    if content_type:
        headers["Content-Type"] = content_type
    return requests.post(gateway.url("/predictions/sentiment"), headers=headers, timeout=60, **kwargs)


def test_only_the_apis_methods_and_paths(front):
    gateway, _ = front
    auth = {"Authorization": f"Bearer {CLIENTS['alice']}"}
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO"):
        r = requests.request(
            method, gateway.url("/predictions/sentiment"), headers=auth, data=b'{"text": "x"}', timeout=30
        )
        assert r.status_code == 405 and r.json()["type"] == "MethodNotAllowed", method
        assert r.headers["Allow"] == "POST"
    # (paths with dot segments or encodings, which an HTTP library would rewrite before
    # sending, go over raw sockets in test_gateway_paths.py)
    for path in (
        "/",
        "/api-description",
        "/ping",
        "/models",
        "/metrics",
        "/predictions/other-model",
        "/predictions/sentiment/1.0/extra",
        "/explanations/other-model",
    ):
        for method in ("GET", "POST", "OPTIONS"):
            r = requests.request(method, gateway.url(path), headers=auth, timeout=30)
            assert r.status_code == 404 and r.json()["type"] == "NotFound", (method, path)
    assert requests.post(gateway.url("/healthz"), timeout=30).status_code == 405
    assert requests.put(gateway.url("/readyz"), timeout=30).status_code == 405
    assert requests.head(gateway.url("/healthz"), timeout=30).status_code == 200
    versioned = requests.post(
        gateway.url("/predictions/sentiment/1.0"), headers=auth, json={"text": "good"}, timeout=30
    )
    assert versioned.status_code == 200


def test_query_strings_are_refused_before_anything_else(front):
    gateway, _ = front
    r = requests.post(gateway.url("/predictions/sentiment?token=abc"), json={"text": "x"}, timeout=30)
    assert r.status_code == 400 and r.json()["type"] == "QueryNotAllowed"
    r = requests.get(gateway.url("/healthz?x=1"), timeout=30)
    assert r.status_code == 400


def test_forms_are_refused_before_torchserve_sees_them(front):
    gateway, node = front
    with gateway.poller.paused():  # its probes would count: the count is of this test's requests
        before = metric(metric_samples(node), "ts_inference_requests_total")
        for body, content_type in (
            (b"text=I%20love%ZZit", "application/x-www-form-urlencoded"),
            (b"text=fine", "application/x-www-form-urlencoded; charset=utf-8"),
            (
                b"--x\r\nContent-Disposition: form-data; name=text\r\n\r\nhi\r\n--x--\r\n",
                "multipart/form-data; boundary=x",
            ),
        ):
            r = ask(gateway, json=None, data=body, content_type=content_type)
            assert r.status_code == 415 and r.json()["type"] == "UnsupportedMediaType", content_type
        assert metric(metric_samples(node), "ts_inference_requests_total") == before


def test_hostile_bodies_through_the_gateway_cost_no_good_request(front):
    """The hostile mix of test_hostile.py, sent through the gateway among good requests."""
    from request_cases import hostile_requests

    gateway, node = front
    _, heldout = split_tweets()
    texts = [t.text for t in heldout[300:330]]
    alone = {t: ask(gateway, json={"text": t}).json() for t in texts}
    rng = random.Random(5)
    lost, fivexx = [], []
    for _ in range(4):
        jobs = [("good", t) for t in rng.sample(texts, 12)]
        jobs += [("bad", case) for case in hostile_requests(rng) if case[1] == ""]
        rng.shuffle(jobs)

        def send(job):
            kind, what = job
            if kind == "good":
                return job, ask(gateway, json={"text": what})
            _, _, body, headers = what
            return job, ask(gateway, json=None, data=body, content_type=headers.get("Content-Type"))

        with ThreadPoolExecutor(max_workers=CONN_PER_KEY) as pool:
            for (kind, what), r in pool.map(send, jobs):
                if kind == "good" and (r.status_code != 200 or r.json()["label"] != alone[what]["label"]):
                    lost.append((r.status_code, r.text[:100]))
                elif kind == "bad" and r.status_code >= 500:
                    fivexx.append((what[0], r.status_code, r.text[:100]))
    assert lost == [] and fivexx == []


def test_pipelined_requests_are_answered_in_order(front):
    gateway, _ = front
    _, heldout = split_tweets()
    texts = [t.text for t in heldout[:16]]
    alone = [ask(gateway, json={"text": t}).json() for t in texts]
    with connect(gateway) as sock:
        sock.sendall(b"".join(request_bytes(json.dumps({"text": t}).encode()) for t in texts))
        buffered = bytearray()
        answers = [read_response(sock, buffered) for _ in texts]
    for (status, _, body), expected in zip(answers, alone, strict=True):
        assert status == 200
        got = json.loads(body)
        assert got["label"] == expected["label"] and got["score"] == pytest.approx(expected["score"], abs=1e-3)


@pytest.mark.parametrize("version, extra", [("1.0", ""), ("1.1", "Connection: close\r\n")])
def test_http_1_0_and_connection_close_end_the_connection_after_the_answer(front, version, extra):
    gateway, _ = front
    with connect(gateway) as sock:
        sock.sendall(request_bytes(b'{"text": "I love this"}', version=version, extra=extra))
        status, headers, body = read_response(sock, bytearray())
        assert status == 200 and json.loads(body)["label"] == "positive"
        assert closed_by_server(sock, within=5), "the connection stayed open"


def test_slow_and_idle_connections_are_closed(front):
    gateway, _ = front
    with connect(gateway) as header_never_ends, connect(gateway) as body_never_ends, connect(gateway) as idle:
        header_never_ends.sendall(b"POST /predictions/sentiment HTTP/1.1\r\nHost: gateway\r\n")
        full = request_bytes(b'{"text": "I love this, really"}')
        body_never_ends.sendall(full[:-8])
        idle.sendall(request_bytes(b'{"text": "I love this"}'))
        assert read_response(idle, bytearray())[0] == 200
        started = time.monotonic()
        for sock in (header_never_ends, body_never_ends):
            assert closed_by_server(sock, within=CLIENT_TIMEOUT + 5)
        assert closed_by_server(idle, within=IDLE_TIMEOUT + 5)
        assert time.monotonic() - started < IDLE_TIMEOUT + 5


def test_a_trickled_header_is_cut_off_at_the_header_timeout(front):
    """One byte a second keeps no read pause long, but the whole header has CLIENT_TIMEOUT."""
    gateway, _ = front
    header = request_bytes(b'{"text": "hi"}')
    with connect(gateway) as sock:
        started = time.monotonic()
        closed = False
        for byte in header[:40]:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.5)
            if time.monotonic() - started > CLIENT_TIMEOUT + 3:
                break
        assert closed or closed_by_server(sock, within=CLIENT_TIMEOUT + 3)
        assert time.monotonic() - started < CLIENT_TIMEOUT + 8


def test_open_requests_are_capped_per_key_and_other_keys_go_on(front):
    gateway, _ = front
    held = []
    try:
        # bob's requests with their bodies still to come: each counts as a request in progress
        for _ in range(CONN_PER_KEY):
            sock = connect(gateway)
            sock.sendall(request_bytes(b'{"text": "I love this"}', key=CLIENTS["bob"])[:-4])
            held.append(sock)
        # until nginx has read the held requests' headers (each answer meanwhile is a 200)
        over = poll(lambda: ask(gateway, key=CLIENTS["bob"]), lambda r: r.status_code == 429)
        assert over.status_code == 429 and over.json()["type"] == "TooManyRequests"
        assert ask(gateway).status_code == 200  # alice is not bob
    finally:
        for sock in held:
            sock.close()
    # until nginx has seen the held connections close
    assert poll(lambda: ask(gateway, key=CLIENTS["bob"]), lambda r: r.status_code == 200).status_code == 200


def test_client_keys_of_any_length_from_16_to_512(server, tmp_path):
    """What users make keys with: `openssl rand -hex 32` (64), base64 of 192 bytes (256),
    and the longest allowed; each is served; a key of 15 is refused when the gateway starts."""
    from gateway.nginx import check_clients

    keys = {
        "hex": "0123456789abcdef" * 4,
        "b64": base64.b64encode(bytes(range(61, 251))).decode(),
        "longest": "Z" * 512,
    }
    assert [len(k) for k in keys.values()] == [64, 256, 512] and keys["b64"].endswith("==")
    with gateway_in_front(server, tmp_path / "gateway", keys) as gateway:
        for name, key in keys.items():
            r = ask(gateway, key=key)
            assert r.status_code == 200, (name, len(key), r.text[:200])
        assert ask(gateway, key=keys["longest"][:-1]).status_code == 401
    with pytest.raises(ValueError):
        check_clients({"short": "k" * 15})
    with pytest.raises(ValueError):
        check_clients({"quote": "k" * 20 + '"'})


def test_a_slow_connection_flood_leaves_good_requests_answered(front):
    """Hundreds of connections that never finish their header, trickling bytes; good
    requests go on meanwhile, and the flood is cut off by the header timeout."""
    gateway, _ = front
    flood = []
    try:
        for _ in range(400):
            sock = connect(gateway)
            sock.sendall(b"POST /predictions/sentiment HTTP/1.1\r\nHost: x\r\n")
            flood.append(sock)
        _, heldout = split_tweets()
        with ThreadPoolExecutor(max_workers=CONN_PER_KEY) as pool:
            answers = list(pool.map(lambda t: ask(gateway, json={"text": t.text}), heldout[:40]))
            for sock in flood[:100]:  # some keep trickling
                try:
                    sock.sendall(b"X")
                except OSError:
                    pass
        assert [a.status_code for a in answers] == [200] * 40
        time.sleep(CLIENT_TIMEOUT + 2)
        still_open = sum(not closed_by_server(sock, within=0.2) for sock in flood)
        assert still_open == 0, f"{still_open} slow connections still open after the header timeout"
    finally:
        for sock in flood:
            sock.close()


@pytest.fixture(scope="module")
def one_slow_node(server, tiny_model_dir, tmp_path_factory):
    """The gateway in front of the shared server and a node whose queue fills at once: the
    tiny model archived as `sentiment`, 300 ms a batch, batches of 1, a job queue of 1."""
    tmp = tmp_path_factory.mktemp("slow-node")
    overrides = {"models": models_setting(1, 1), "job_queue_size": "1"}
    with (
        tiny_node(tiny_model_dir, tmp, overrides=overrides, latency_ms=300) as slow,
        gateway_in_front([server, slow], tmp / "gateway", CLIENTS) as gateway,
    ):
        yield gateway, (server, slow)


def test_a_nodes_own_503_is_passed_on_and_the_node_stays_in_rotation(one_slow_node):
    """A flood fills the slow node's queue: its own 503s reach the clients as they are, and
    they do not count as the node failing, so right after (inside the fail_timeout a failed
    node would sit out) paced requests still go to both nodes. The gateway's readiness probe
    goes on meanwhile and goes to the slow node straight: when it and a client's request
    reach that node's queue of one at the same instant, the client gets that node's own 503
    (seen in CI), which is the behaviour under test, not a failure of it."""
    gateway, _ = one_slow_node
    slow_node = str(node_socket(gateway.workdir, 2))
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(lambda _: ask(gateway), range(24)))
    statuses = [a.status_code for a in answers]
    assert 503 in statuses, statuses  # the slow node's queue was full
    assert set(statuses) <= {200, 503}
    assert {a.json()["code"] for a in answers if a.status_code == 503} == {503}
    since = settled(lambda: log_length(gateway))  # the flood's answers all logged
    paced = []
    for _ in range(10):
        answer = ask(gateway)
        paced.append(answer.status_code if answer.status_code == 200 else (answer.status_code, answer.text))
        time.sleep(0.35)
    routed = poll(lambda: gateway_answers(gateway, since), lambda a: len(a) >= 10)
    assert len(routed) == 10, routed
    for status, (node, logged) in zip(paced, routed, strict=True):
        assert status == 200 or (logged == 503 and node.endswith(slow_node)), (paced, routed)
    to_slow = sum(node.endswith(slow_node) for node, _ in routed)
    assert to_slow >= 3, f"the slow node got {to_slow} of 10 requests: it was taken out ({routed})"


def test_a_busy_node_stays_ready(one_slow_node):
    """Readiness says whether a node can serve, not how busy it is: while the slow node's
    queue is full (its own 503s) and its answers are slow, the gateway's poller keeps it
    ready, so a Service would not move its load onto the others."""
    gateway, (_, slow) = one_slow_node
    from gateway.nginx import Node, ReadinessPoller

    poller = ReadinessPoller(gateway.workdir / "busy-check", [Node.from_dir(slow.workdir)], "sentiment", interval=3600)
    (gateway.workdir / "busy-check" / "static").mkdir(parents=True)
    assert poller.poll_once(), "the idle slow node was not ready"  # ready first, then busy
    verdicts = []
    stop = time.monotonic() + 8
    with ThreadPoolExecutor(max_workers=24) as pool:
        flood = [pool.submit(lambda: [ask(gateway).status_code for _ in range(6)]) for _ in range(20)]
        while time.monotonic() < stop:
            verdicts.append(poller.poll_once())
        statuses = [s for f in flood for s in f.result()]
    assert 503 in statuses, "the slow node's queue never filled: the test did not load it"
    assert verdicts and all(verdicts), f"{verdicts.count(False)} of {len(verdicts)} polls said not ready"


def test_requests_that_waited_past_the_queue_budget_get_503_with_retry_after(tiny_model_dir, tmp_path):
    """A node of the tiny model at 300 ms a batch of 4, queue budget 200 ms, and 20
    requests at once through the gateway: the first batch is answered, and the requests
    that then waited past the budget are answered 503 Overloaded (JSON, Retry-After: 1,
    through TorchServe and nginx) instead of being run late."""
    options = ["queue_budget_ms=200"]
    with (
        tiny_node(tiny_model_dir, tmp_path, options, {"models": models_setting(4, 5)}, latency_ms=300) as node,
        gateway_in_front(node, tmp_path / "gateway", CLIENTS) as gateway,
        ThreadPoolExecutor(max_workers=20) as pool,
    ):
        answers = list(pool.map(lambda _: ask(gateway), range(20)))
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) >= 1 and statuses.count(503) >= 8, statuses
    assert set(statuses) <= {200, 503}, statuses
    for refused in (a for a in answers if a.status_code == 503):
        assert refused.json()["type"] == "Overloaded", refused.text
        assert refused.headers.get("Retry-After") == "1" and refused.headers["Content-Type"] == "application/json"
