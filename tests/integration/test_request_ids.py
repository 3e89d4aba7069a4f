"""One request ID from the client to every log line about its request: the gateway takes a
client's X-Request-ID when it is one (handlers/contract.py REQUEST_ID_PATTERN) or makes
one, returns it on every answer (nginx's refusals, the handler's errors and 200s alike),
and the same ID is in the gateway's access log, TorchServe's access log and the handler's
lines in the worker's log. A real TorchServe with the default model, a real nginx."""

from __future__ import annotations

import json
import re
import uuid

import pytest
import requests

from common.contract import REQUEST_ID_HEADER, REQUEST_ID_PARAM, REQUEST_ID_PATTERN
from helpers import gateway_in_front, poll

CLIENTS = {"alice": "alice-request-id-key-4242"}
KEY = {"Authorization": f"Bearer {CLIENTS['alice']}"}
MADE = re.compile(r"[0-9a-f]{32}")  # nginx's $request_id


@pytest.fixture(scope="module")
def gateway(server, tmp_path_factory):
    with gateway_in_front(server, tmp_path_factory.mktemp("request-id-gateway"), CLIENTS) as gw:
        yield gw


def new_id(tag: str) -> str:
    return f"{tag}.{uuid.uuid4().hex}:t_1-x"


def torchserve_log(server, name: str) -> str:
    path = server.workdir / "logs" / name
    return path.read_text(errors="replace") if path.exists() else ""


def gateway_entries(gateway) -> dict[str, dict]:
    """The gateway's access log lines, by request ID."""
    entries = {}
    for line in gateway.log_file.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            entries[entry["request_id"]] = entry
    return entries


def test_one_id_is_followed_through_the_gateway_torchserve_and_the_handler(server, gateway):
    """A prediction answered 200 and one the handler refuses (413): each answer carries the
    client's ID, and each ID is in all three logs (the refused one's TorchServe line keeps
    its ID though it withholds the path)."""
    answered, refused = new_id("ok"), new_id("refused")
    url = gateway.url("/predictions/sentiment")
    r = requests.post(url, json={"text": "I love this"}, headers={**KEY, REQUEST_ID_HEADER: answered}, timeout=60)
    assert r.status_code == 200 and r.headers[REQUEST_ID_HEADER] == answered
    r = requests.post(url, json={"text": "x" * 10_001}, headers={**KEY, REQUEST_ID_HEADER: refused}, timeout=60)
    assert r.status_code == 413 and r.json()["type"] == "TextTooLong"
    assert r.headers[REQUEST_ID_HEADER] == refused

    ids = (answered, refused)
    entries = poll(lambda: gateway_entries(gateway), until=lambda e: all(i in e for i in ids), timeout=30)
    assert (entries[answered]["status"], entries[refused]["status"]) == (200, 413)
    access = poll(
        lambda: torchserve_log(server, "access_log.log"),
        until=lambda text: all(f"{REQUEST_ID_PARAM}={i}" in text for i in ids),
        timeout=30,
    )
    line = next(line for line in access.splitlines() if f"{REQUEST_ID_PARAM}={refused}" in line)
    assert "(path withheld)" in line and '" 413 ' in line, line
    line = next(line for line in access.splitlines() if f"{REQUEST_ID_PARAM}={answered}" in line)
    assert '"POST /predictions/sentiment HTTP/1.1" 200' in line, line
    handler = poll(
        lambda: torchserve_log(server, "model_log.log"),
        until=lambda text: all(i in text for i in ids),
        timeout=30,
    )
    assert re.search(rf"batch of \d+ answered: request ids .*{re.escape(answered)}", handler)
    assert f"request {refused} refused: TextTooLong (413)" in handler


@pytest.mark.parametrize(
    "method, path, headers, body, status",
    [
        ("POST", "/predictions/sentiment", {}, b'{"text": "hi"}', 401),  # no key
        ("POST", "/predictions/nope", KEY, b'{"text": "hi"}', 404),
        ("GET", "/predictions/sentiment", KEY, None, 405),
        ("POST", "/predictions/sentiment", {**KEY, "Content-Type": "application/xml"}, b"<x/>", 415),
        ("POST", "/predictions/sentiment?a=1", KEY, b'{"text": "hi"}', 400),
        ("POST", "/v1/models/sentiment:predict", {**KEY, "Content-Type": "text/plain"}, b"hi", 415),
        ("GET", "/readyz", {}, None, 200),
        ("GET", "/v2/health/live", {}, None, 200),
    ],
)
def test_every_answer_of_the_gateways_own_carries_the_id_and_logs_it(gateway, method, path, headers, body, status):
    request_id = new_id("gw")
    r = requests.request(
        method, gateway.url(path), data=body, headers={**headers, REQUEST_ID_HEADER: request_id}, timeout=30
    )
    assert r.status_code == status and r.headers[REQUEST_ID_HEADER] == request_id
    entries = poll(lambda: gateway_entries(gateway), until=lambda e: request_id in e, timeout=30)
    assert entries[request_id]["status"] == status


@pytest.mark.parametrize(
    "sent",
    [
        "",
        "a b",
        "x;y",
        "id\twith-tab",
        "ü-not-ascii",
        "a" * 129,  # one over the length
        "key=value",
        "../etc",  # '/' is not in the alphabet
    ],
)
def test_a_client_id_that_is_not_one_is_replaced_by_one_the_gateway_makes(gateway, sent):
    r = requests.post(
        gateway.url("/predictions/sentiment"),
        json={"text": "fine"},
        headers={**KEY, REQUEST_ID_HEADER: sent.encode("utf-8")},
        timeout=60,
    )
    assert r.status_code == 200
    made = r.headers[REQUEST_ID_HEADER]
    assert MADE.fullmatch(made) and made != sent
    assert poll(lambda: gateway_entries(gateway), until=lambda e: made in e, timeout=30)[made]["status"] == 200


def test_the_longest_id_is_kept_and_each_request_without_one_gets_its_own(gateway):
    longest = "a" * 128
    assert re.fullmatch(REQUEST_ID_PATTERN, longest)
    url = gateway.url("/predictions/sentiment")
    r = requests.post(url, json={"text": "fine"}, headers={**KEY, REQUEST_ID_HEADER: longest}, timeout=60)
    assert r.headers[REQUEST_ID_HEADER] == longest
    made = {
        requests.post(url, json={"text": "fine"}, headers=KEY, timeout=60).headers[REQUEST_ID_HEADER] for _ in range(20)
    }
    assert len(made) == 20 and all(MADE.fullmatch(m) for m in made)


def test_straight_to_torchserve_the_parameter_is_no_part_of_the_request(server):
    """TorchServe hands a query parameter to the handler as a field of the request: the
    handler drops the gateway's, so an empty body is still EmptyBody (not a form without a
    text), and a client's valid header names its request in the handler's log."""
    request_id = new_id("direct")
    r = requests.post(
        server.url("inference", f"/predictions/sentiment?{REQUEST_ID_PARAM}={request_id}"),
        data=b"",
        headers={
            "Authorization": f"Bearer {server.keys['inference']}",
            "Content-Type": "application/json",
            REQUEST_ID_HEADER: request_id,
        },
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["type"] == "EmptyBody"
    handler = poll(lambda: torchserve_log(server, "model_log.log"), until=lambda text: request_id in text, timeout=30)
    assert f"request {request_id} refused: EmptyBody (400)" in handler
