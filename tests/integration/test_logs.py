"""No request text and no key in any log, whatever is sent and wherever it goes in.

Marked texts and keys are sent through every path a request can take, good and hostile,
straight to TorchServe and through the gateway; then every file either process wrote is
searched for the marks and for every key."""

from __future__ import annotations

import http.client
import json
import socket

import grpc
import pytest
import requests

from clients.grpc_client import GrpcError, SentimentGrpcClient
from helpers import gateway_in_front, poll, settled

MARK = "zebra-umbrella-confidential"
CLIENTS = {"alice": "alice-gateway-key-4242", "last-request": "last-request-key-4242"}


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


def log_texts(workdir) -> dict[str, str]:
    """{file name: text} of every log file under a server's or a gateway's directory."""
    return {
        str(p): p.read_text(errors="replace")
        for p in workdir.rglob("*")
        if p.is_file() and p.suffix in (".log", ".out")
    }


def all_log_text(server, gateway) -> str:
    """Every log both wrote, read once the request sent last is in TorchServe's access log
    (by its source port) and in the gateway's (by its client), so what came before it was
    written too, and then once nothing more arrives."""
    # a 200 (the log withholds the path of any other answer), read by its length: TorchServe
    # keeps the connection open after a 200 whatever the client asks
    straight = http.client.HTTPConnection("127.0.0.1", server.ports["inference"], timeout=60)
    headers = {"Authorization": f"Bearer {server.keys['inference']}", "Content-Type": "application/json"}
    straight.request("POST", "/predictions/sentiment", json.dumps({"text": "fine"}), headers)
    assert straight.sock is not None
    port = straight.sock.getsockname()[1]
    assert straight.getresponse().read()
    straight.close()
    requests.post(
        gateway.url("/predictions/sentiment"),
        json={"text": "fine"},
        headers={"Authorization": f"Bearer {CLIENTS['last-request']}"},
        timeout=60,
    )
    last = (f'/127.0.0.1:{port} "POST /predictions/sentiment HTTP/1.1" 200', '"client":"last-request"')

    def read() -> str:
        return "".join(log_texts(server.workdir).values()) + "".join(log_texts(gateway.workdir).values())

    logs = poll(read, until=lambda text: all(mark in text for mark in last), timeout=60)
    assert all(mark in logs for mark in last), f"the last request's access log lines never came: {last}"
    return settled(read)


def send_raw(port: int, path: str, key: str, body: bytes) -> None:
    """One request over a socket, its path as given (no library normalises it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:  # TorchServe closes on some paths without an answer
            pass


def test_no_request_text_and_no_key_in_any_log(server, gateway):
    key = server.keys["inference"]
    direct = server.url("inference", "/predictions/sentiment")
    through = gateway.url("/predictions/sentiment")
    client_key = CLIENTS["alice"]
    for url, auth in ((direct, key), (through, client_key)):
        for body, content_type in hostile_bodies():
            requests.post(
                url, data=body, headers={"Authorization": f"Bearer {auth}", "Content-Type": content_type}, timeout=60
            )
        # keys where keys do not belong: in the query, in the path, a wrong key in the header
        requests.post(f"{url}?token={auth}&text={marked(20)}", json={"text": marked(21)}, timeout=60)
        requests.post(
            url.replace("sentiment", marked(22)),
            json={"text": marked(23)},
            headers={"Authorization": f"Bearer {auth}"},
            timeout=60,
        )
        requests.post(url, json={"text": marked(24)}, headers={"Authorization": f"Bearer {marked(25)}"}, timeout=60)
        requests.post(
            url.replace("/predictions/", "/explanations/"),
            json={"text": marked(26)},
            headers={"Authorization": f"Bearer {auth}"},
            timeout=60,
        )
        requests.get(url.replace("/predictions/sentiment", f"/{marked(27)}"), timeout=60)
    # paths an HTTP library would rewrite before sending (dot segments, encodings, ';'),
    # with marks in them, sent raw, straight and through the gateway
    for port, auth in ((server.ports["inference"], key), (gateway.settings.port, client_key)):
        for path in (
            f"/predictions/sentiment/../{marked(40)}",
            f"/predictions/{marked(41)}/../sentiment",
            f"/predictions/sentiment/%2e%2e/{marked(42)}",
            f"/predictions/sentiment;{marked(43)}",
            f"/predictions/sentiment/{marked(44)}",
            f"/predictions//sentiment/./{marked(45)}",
        ):
            send_raw(port, path, auth, json.dumps({"text": marked(46)}).encode())
    # management and gRPC, with marks in what they carry
    requests.get(
        server.url("management", f"/models/{marked(30)}"),
        headers={"Authorization": f"Bearer {server.keys['management']}"},
        timeout=60,
    )
    requests.post(
        server.url("management", f"/models?url={marked(31)}.mar"),
        headers={"Authorization": f"Bearer {server.keys['management']}"},
        timeout=60,
    )
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
    # the gateway's access log, whichever file it writes it to
    assert "POST" in "".join(log_texts(gateway.workdir).values()), "the gateway logged no request"
    assert MARK not in logs, logs[max(0, logs.find(MARK) - 300) : logs.find(MARK) + 100]
    for name, value in {**server.keys, **{f"gateway {k}": v for k, v in CLIENTS.items()}}.items():
        assert value not in logs, f"the {name} key is in the logs"


def multi_line(n: int) -> list[str]:
    """A marked text of several lines: each line carries the mark, with a number of its own."""
    return [f"{marked(n)} line {k}" for k in range(1, 5)]


def multi_line_bodies():
    """(body, Content-Type, headers) pairs that carry a marked text over several lines, the
    ways a client can send it straight to TorchServe: good and malformed JSON, plain text,
    forms that Netty decodes and that it cannot (it quotes what it cannot decode in its
    exception: a url-encoded form up to its first line break, a multipart part's charset
    whole, carriage returns and NELs included, which log4j2's regex $ took for line ends),
    a multipart body cut short, and the JSON-only protocols."""

    def lines(n, sep="\n"):
        return sep.join(multi_line(n))

    def part_with_charset(charset: str) -> bytes:
        return (
            '--b\r\nContent-Disposition: form-data; name="text"\r\nContent-Type: text/plain; charset='
            + charset
            + "\r\n\r\nI love this\r\n--b--\r\n"
        ).encode("latin-1")

    return [
        (json.dumps({"text": lines(40, "\n")}).encode(), "application/json", {}),
        (('{"text": "' + lines(41) + '"}').encode(), "application/json", {}),  # raw newlines: not JSON
        (('{"text": ["' + lines(42, "\r\n") + '", 7').encode(), "application/json", {}),
        (lines(43).encode(), "text/plain", {}),
        (lines(44, "\r\n").encode() + b"\xff\xfe", "text/plain", {}),
        (("text=" + lines(45) + "%ZZ").encode(), "application/x-www-form-urlencoded", {}),
        (("text=" + lines(46, "\r\n") + "%").encode(), "application/x-www-form-urlencoded", {}),
        (("text=%ZZ" + lines(47)).encode(), "application/x-www-form-urlencoded", {}),
        ((lines(48) + "=%ZZ").encode(), "application/x-www-form-urlencoded", {}),
        (("comment=" + lines(49)).encode(), "application/x-www-form-urlencoded", {}),
        (("text=" + lines(50)).encode(), "application/x-www-form-urlencoded", {}),
        (
            ('--b\r\nContent-Disposition: form-data; name="text"\r\n\r\n' + lines(51, "\r\n")).encode(),
            "multipart/form-data; boundary=b",
            {},
        ),
        (part_with_charset(lines(54, "\r")), "multipart/form-data; boundary=b", {}),
        (part_with_charset(lines(55, "\x85")), "multipart/form-data; boundary=b", {}),
        (part_with_charset(lines(56, "\x0b")), "multipart/form-data; boundary=b", {}),
        (
            json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": [lines(52)]}]}).encode(),
            "application/json",
            {"sentiment-protocol": "oip-v2"},
        ),
        (('{"instances": ["' + lines(53) + '"]}').encode(), "application/json", {"sentiment-protocol": "kserve-v1"}),
    ]


def test_no_line_of_a_multi_line_text_in_any_log(server, gateway):
    """A request body of several lines sent straight to TorchServe (port 8080): no line of
    it reaches a log, not even when an exception's message quotes it (log4j2.xml masks the
    whole message, not only its first line)."""
    url = server.url("inference", "/predictions/sentiment")
    auth = {"Authorization": f"Bearer {server.keys['inference']}"}
    statuses = []
    for body, content_type, headers in multi_line_bodies():
        response = requests.post(url, data=body, headers={**auth, "Content-Type": content_type, **headers}, timeout=60)
        statuses.append(response.status_code)
    assert 200 in statuses and any(400 <= s < 500 for s in statuses), statuses  # both answers were met

    logs = all_log_text(server, gateway)
    for n in range(40, 57):
        for line in multi_line(n):
            assert line not in logs, logs[max(0, logs.find(line) - 300) : logs.find(line) + 100]
    assert MARK not in logs, logs[max(0, logs.find(MARK) - 300) : logs.find(MARK) + 100]
