"""No request text and no key in any log, whatever is sent and wherever it goes in.

Marked texts and keys are sent through every path a request can take, good and hostile,
straight to TorchServe and through the gateway; then every file either process wrote is
searched for the marks and for every key."""

from __future__ import annotations

import json
import time

import grpc
import pytest
import requests

from helpers import gateway_in_front
from clients.grpc_client import GrpcError, SentimentGrpcClient

MARK = "zebra-umbrella-confidential"
CLIENTS = {"alice": "alice-gateway-key-4242"}


def marked(n: int) -> str:
    return f"{MARK}-{n}"


def hostile_bodies():
    """(body, Content-Type) pairs that carry a mark and fail in every way the handler knows."""
    return [
        (json.dumps({"text": marked(1)}).encode(), "application/json"),
        (json.dumps({"text": [marked(2), 7]}).encode(), "application/json"),
        ((marked(3) + '{"').encode(), "text/plain"),
        (f'{{"text": "{marked(4)} \\ud800"}}'.encode(), "application/json"),
        (b'{"text": "' + marked(5).encode() + b'", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json"),
        (b'{"text": "' + marked(6).encode() + b'", "n": ' + b"9" * 6000 + b"}", "application/json"),
        (marked(7).encode() + b"\xff\xfe", "text/plain"),
        (f'{{"{marked(8)}": 1'.encode(), "application/json"),
        (f"<text>{marked(9)}</text>".encode(), "application/xml"),
        (f"text={marked(10)}%ZZ".encode(), "application/x-www-form-urlencoded"),
        (f"text={marked(11)}".encode(), "application/x-www-form-urlencoded"),
        (f"comment={marked(12)}".encode(), "application/x-www-form-urlencoded"),
        (json.dumps({"text": marked(13) * 400}).encode(), "application/json"),
    ]


@pytest.fixture(scope="module")
def gateway(server, tmp_path_factory):
    with gateway_in_front(server, tmp_path_factory.mktemp("log-gateway"), CLIENTS) as gw:
        yield gw


def all_log_text(server, gateway) -> str:
    time.sleep(1.5)  # log appenders flush
    files = [p for p in server.workdir.rglob("*") if p.is_file() and p.suffix in (".log", ".out")]
    files += [p for p in gateway.workdir.rglob("*.log")] + [gateway.workdir / "logs" / "nginx.out"]
    assert any(p.name == "access_log.log" for p in files) and any(p.name == "access.log" for p in files)
    return "".join(p.read_text(errors="replace") for p in files if p.is_file())


def test_no_request_text_and_no_key_in_any_log(server, gateway):
    key = server.keys["inference"]
    direct = server.url("inference", "/predictions/sentiment")
    through = gateway.url("/predictions/sentiment")
    client_key = CLIENTS["alice"]
    for url, auth in ((direct, key), (through, client_key)):
        for body, content_type in hostile_bodies():
            requests.post(url, data=body, headers={"Authorization": f"Bearer {auth}", "Content-Type": content_type},
                          timeout=60)
        # keys where keys do not belong: in the query, in the path, a wrong key in the header
        requests.post(f"{url}?token={auth}&text={marked(20)}", json={"text": marked(21)}, timeout=60)
        requests.post(url.replace("sentiment", marked(22)), json={"text": marked(23)},
                      headers={"Authorization": f"Bearer {auth}"}, timeout=60)
        requests.post(url, json={"text": marked(24)}, headers={"Authorization": f"Bearer {marked(25)}"}, timeout=60)
        requests.post(url.replace("/predictions/", "/explanations/"), json={"text": marked(26)},
                      headers={"Authorization": f"Bearer {auth}"}, timeout=60)
        requests.get(url.replace("/predictions/sentiment", f"/{marked(27)}"), timeout=60)
    # management and gRPC, with marks in what they carry
    requests.get(server.url("management", f"/models/{marked(30)}"),
                 headers={"Authorization": f"Bearer {server.keys['management']}"}, timeout=60)
    requests.post(server.url("management", f"/models?url={marked(31)}.mar"),
                  headers={"Authorization": f"Bearer {server.keys['management']}"}, timeout=60)
    with SentimentGrpcClient(f"127.0.0.1:{server.ports['grpc_inference']}", key) as client:
        assert client.predict({"text": marked(32)})["label"]
        with pytest.raises(GrpcError):
            client.predict({"text": [marked(33), 3]})
    with SentimentGrpcClient(f"127.0.0.1:{server.ports['grpc_inference']}", marked(34)) as client:
        with pytest.raises(GrpcError) as refused:
            client.predict({"text": marked(35)})
        assert refused.value.code != grpc.StatusCode.OK

    logs = all_log_text(server, gateway)
    assert "POST /predictions/sentiment" in logs, "no access log line was written"
    assert MARK not in logs, logs[max(0, logs.find(MARK) - 300): logs.find(MARK) + 100]
    for name, value in {**server.keys, **{f"gateway {k}": v for k, v in CLIENTS.items()}}.items():
        assert value not in logs, f"the {name} key is in the logs"
