"""The gateway's metrics listener (--metrics-port) in front of a real TorchServe: GET
/metrics answers TorchServe's own Prometheus text, everything else is refused as JSON, and
its limits are its own: a small connection cap per client address (past it closed at once,
while other addresses still scrape), a scrape rate per address, and timeouts for the
header and between scrapes. Spoken to over raw sockets from loopback addresses of their
own (127.0.0.N: each a client address, as a pod sees them), with the shipped limits.

TorchServe's own metrics port caps and times out nothing, which is why the pod keeps it
on loopback behind this listener (container/production.properties)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter

import pytest
import requests

from common.net import free_port
from gateway.latency import METRIC
from gateway.nginx import METRICS_OFF_SOCKET, Gateway, GatewaySettings, Node, render
from gateway.refusals import RETRY_AFTER, refusals
from helpers import closed_by_server, gateway_in_front, log_length, poll, predict, raw_exchange, read_response

CLIENTS = {"alice": "alice-key-0123456789abcdef"}
SHIPPED = GatewaySettings(0, {})  # the shipped limits of the metrics listener
# a client address each: the rate per address is kept apart from the connection cap
SCRAPER, HASTY, OTHER, IDLER, FLOODER = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"
GAUGER = "127.0.0.7"  # scrapes the gateway's own metrics
TABLE = refusals("sentiment", "1m")


@pytest.fixture(scope="module")
def gateway(server, tmp_path_factory):
    with gateway_in_front(server, tmp_path_factory.mktemp("metrics"), CLIENTS, metrics_port=free_port()) as gw:
        yield gw


def request(method: str = "GET", path: str = "/metrics", extra: str = "", version: str = "HTTP/1.1") -> bytes:
    return f"{method} {path} {version}\r\nHost: sentiment\r\n{extra}\r\n".encode()


def exchange(port: int, data: bytes, source: str = SCRAPER, head_only: bool = False) -> tuple[int, dict, bytes]:
    return raw_exchange(port, data, source=source, timeout=20, head_only=head_only)


def assert_refusal(answer: tuple[int, dict, bytes], name: str) -> None:
    status, headers, body = answer
    refusal = TABLE[name]
    assert status == refusal.status, (name, status, body[:200])
    assert headers["content-type"] == "application/json", headers
    assert json.loads(body) == {"code": refusal.status, "type": refusal.type, "message": refusal.message}
    if refusal.status in RETRY_AFTER:
        assert headers.get("retry-after") == "1", headers


def test_get_metrics_answers_torchserves_prometheus_text(gateway, server):
    """Through the listener, TorchServe's own text, the same series the node's port serves;
    one access log line naming the route, never the path."""
    assert predict(server, b'{"text": "I love this"}').status_code == 200
    answered = requests.post(
        gateway.url("/predictions/sentiment"),
        json={"text": "I love this"},
        headers={"Authorization": f"Bearer {CLIENTS['alice']}"},
        timeout=60,
    )
    assert answered.status_code == 200
    since = log_length(gateway)
    status, headers, body = exchange(gateway.settings.metrics_port, request())
    assert status == 200, body[:300]
    text = body.decode()
    assert "# TYPE ts_inference_requests_total counter" in text
    assert "ts_inference_requests_total{" in text and "SentimentBatchSize" in text
    direct = requests.get(server.url("metrics", "/metrics"), timeout=10).text

    def names(text: str) -> set[str]:
        return {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}

    assert "ts_inference_requests_total" in names(text) and names(text) <= names(direct)  # direct came later
    assert not {"server", "etag", "last-modified"} & set(headers), headers
    # Prometheus' own client: keep-alive, its Accept header
    scraped = requests.get(f"http://127.0.0.1:{gateway.settings.metrics_port}/metrics", timeout=10)
    assert scraped.status_code == 200 and "ts_inference_requests_total" in scraped.text
    lines = poll(
        lambda: [
            json.loads(line) for line in gateway.log_file.read_text().splitlines()[since:] if line.startswith("{")
        ],
        lambda entries: any(e["route"] == "metrics" for e in entries),
    )
    entry = next(e for e in lines if e["route"] == "metrics")
    assert (entry["status"], entry["address"], entry["client"]) == (200, SCRAPER, "")
    # and not on the API's port
    assert exchange(gateway.settings.port, request())[0] == 404


def latency_counts(port: int) -> Counter[tuple[str, str]]:
    """(route, code) -> requests counted, from the gateway's own metrics."""
    status, headers, body = exchange(port, request(path="/metrics/gateway"), source=GAUGER)
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4"), (status, body[:200])
    counts: Counter[tuple[str, str]] = Counter()
    for match in re.finditer(rf'^{METRIC}_count{{route="(\w+)",code="(\w+)"}} (\d+)$', body.decode(), re.M):
        counts[(match[1], match[2])] = int(match[3])
    return counts


def test_the_gateway_counts_each_request_by_route_and_status(server, tmp_path):
    """GET /metrics/gateway: the latency histogram counts exactly the requests sent, by
    route and status (a 429 from a rate of 1/s, a 401, a 404 with no route, 200s on two
    routes); the metrics listener's own scrapes are not among them."""
    with gateway_in_front(
        server, tmp_path / "gateway", CLIENTS, metrics_port=free_port(), rate_per_s=1, burst=1
    ) as gateway:
        port = gateway.settings.metrics_port
        before = latency_counts(port)
        auth = {"Authorization": f"Bearer {CLIENTS['alice']}"}
        sent: Counter[tuple[str, str]] = Counter()

        def send(method: str, path: str, route: str, **kwargs) -> int:
            status = requests.request(method, gateway.url(path), timeout=60, **kwargs).status_code
            sent[(route, str(status))] += 1
            return status

        send("POST", "/predictions/sentiment", "predictions", json={"text": "I love this"})  # no key
        send("GET", "/nowhere", "none")
        send("GET", "/healthz", "healthz")
        # past the rate: one 429 at least (a request's answer within the second)
        statuses = [
            send("POST", "/v2/models/sentiment/infer", "v2_infer", json=V2_BODY, headers=auth) for _ in range(3)
        ]
        while 429 not in statuses and len(statuses) < 50:
            statuses.append(send("POST", "/v2/models/sentiment/infer", "v2_infer", json=V2_BODY, headers=auth))
        assert {200, 429} <= set(statuses), statuses
        assert {("predictions", "401"), ("none", "404"), ("healthz", "200")} <= set(sent)

        expected = before + sent
        after = poll(lambda: latency_counts(port), lambda counts: counts == expected, timeout=30, interval=1)
        assert after == expected
        buckets = latency_counts_bucket(port, "v2_infer", "200")
        assert buckets == sorted(buckets) and buckets[-1] == after[("v2_infer", "200")]


def latency_counts_bucket(port: int, route: str, code: str) -> list[int]:
    """The cumulative buckets of one series, +Inf last."""
    body = exchange(port, request(path="/metrics/gateway"), source=GAUGER)[2].decode()
    pattern = rf'^{METRIC}_bucket{{route="{route}",code="{code}",le="[^"]+"}} (\d+)$'
    return [int(v) for v in re.findall(pattern, body, re.M)]


V2_BODY = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["I love this"]}]}


# what the metrics listener refuses, and with which of the table's refusals
REFUSED = {
    "the root": (request(path="/"), "metrics_not_found"),
    "another path": (request(path="/predictions/sentiment"), "metrics_not_found"),
    "TorchServe's API description": (request(path="/api-description"), "metrics_not_found"),
    "a query string": (request(path="/metrics?name[]=ts_inference_requests_total"), "metrics_not_found"),
    "a trailing slash": (request(path="/metrics/"), "metrics_not_found"),
    "the gateway's with a trailing slash": (request(path="/metrics/gateway/"), "metrics_not_found"),
    "the gateway's with a query string": (request(path="/metrics/gateway?x=1"), "metrics_not_found"),
    "the gateway's under another name": (request(path="/metrics/Gateway"), "metrics_not_found"),
    "POST to the gateway's": (request("POST", "/metrics/gateway", "Content-Length: 0\r\n"), "metrics_get_only"),
    "a percent-encoded path": (request(path="/%6detrics"), "metrics_not_found"),
    "a doubled slash": (request(path="//metrics"), "metrics_not_found"),
    "a dot segment": (request(path="/x/../metrics"), "metrics_not_found"),
    "a refusal's own file": (request(path="/refusals/native/not_found.json"), "metrics_not_found"),
    "POST": (request("POST", extra="Content-Length: 0\r\n"), "metrics_get_only"),
    "PUT": (request("PUT", extra="Content-Length: 0\r\n"), "metrics_get_only"),
    "DELETE": (request("DELETE"), "metrics_get_only"),
    "OPTIONS": (request("OPTIONS"), "metrics_get_only"),
    "TRACE": (request("TRACE"), "metrics_get_only"),
    "a body": (request(extra="Content-Length: 100\r\n"), "metrics_no_body"),
    "a garbled request line": (b"GET\x00 /metrics HTTP/1.1\r\n\r\n", "bad_request"),
    "no Host": (b"GET /metrics HTTP/1.1\r\n\r\n", "bad_request"),
    "HTTP/2.0": (request(version="HTTP/2.0"), "http_version"),
    "a request line over 8 KiB": (request(path="/metrics" + "x" * 9000), "uri_too_long"),
    "a header line over 8 KiB": (request(extra=f"X-Long: {'x' * 9000}\r\n"), "header_too_large"),
    "gzip Transfer-Encoding": (request("POST", extra="Transfer-Encoding: gzip\r\n"), "not_implemented"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_everything_else_is_refused_as_json(gateway, case):
    data, name = REFUSED[case]
    assert_refusal(exchange(gateway.settings.metrics_port, data, source=OTHER), name)


def test_head_is_refused_too(gateway):
    status, headers, _ = exchange(gateway.settings.metrics_port, request("HEAD"), source=OTHER, head_only=True)
    assert status == 405 and headers["allow"] == "GET", headers


def test_a_node_that_does_not_answer_is_a_json_502(server, tmp_path):
    """The node's metrics port closed: NodeUnavailable, as the API's routes answer."""
    node = Node.from_dir(server.workdir)
    node.metrics = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = GatewaySettings(free_port(), CLIENTS, metrics_port=free_port())
    gateway = Gateway(tmp_path / "gateway", settings).start([node])
    try:
        assert_refusal(exchange(settings.metrics_port, request()), "no_node")
    finally:
        gateway.stop()


def test_scrapes_are_rate_limited_per_address(gateway):
    """One address past the burst gets 429 with Retry-After; another address scrapes on."""
    port = gateway.settings.metrics_port
    time.sleep(SHIPPED.metrics_burst / SHIPPED.metrics_rate_per_s)  # the bucket full again
    with socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(HASTY, 0)) as sock:
        buffered, answers = bytearray(), []
        for _ in range(SHIPPED.metrics_burst + 6):
            sock.sendall(request())
            answers.append(read_response(sock, buffered))
    statuses = [a[0] for a in answers]
    assert statuses[: SHIPPED.metrics_burst] == [200] * SHIPPED.metrics_burst, statuses
    assert 429 in statuses, statuses
    assert_refusal(next(a for a in answers if a[0] == 429), "too_many_scrapes")
    assert exchange(port, request(), source=OTHER)[0] == 200


def test_one_address_gets_at_most_the_cap_and_other_addresses_still_scrape(gateway):
    """One address opens many connections and holds them: all but the cap's are closed at
    once; another address scrapes meanwhile; the flooder's held ones are its own."""
    port = gateway.settings.metrics_port
    cap = SHIPPED.metrics_conn_per_address
    flood = [
        socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(FLOODER, 0)) for _ in range(5 * cap)
    ]
    try:
        started = time.monotonic()
        held = [s for s in flood if not closed_by_server(s, 0.05)]
        assert time.monotonic() - started < SHIPPED.metrics_timeout_s
        assert len(held) == cap, f"{len(held)} of {len(flood)} connections from one address held"
        for _ in range(3):
            status, _, body = exchange(port, request(), source=OTHER)
            assert status == 200 and b"ts_inference_requests_total" in body
        # the flooder's held connections still serve it; a new one is closed at once
        held[0].settimeout(10)
        held[0].sendall(request())
        assert read_response(held[0], bytearray())[0] == 200
        extra = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(FLOODER, 0))
        flood.append(extra)
        assert closed_by_server(extra, 2.0)
        # and the API's port is not counted against it
        assert exchange(gateway.settings.port, request(path="/healthz"), source=FLOODER)[0] == 200
    finally:
        for sock in flood:
            sock.close()


def test_silent_slow_and_idle_connections_are_closed_after_their_timeouts(gateway):
    """A connection that sends nothing, one that trickles its header and one left idle
    after a scrape: each closed by the gateway, the first two after the header timeout
    (5 s), the idle one after the time allowed between scrapes (20 s)."""
    port = gateway.settings.metrics_port
    header_s, idle_s = SHIPPED.metrics_timeout_s, SHIPPED.metrics_idle_timeout_s
    closed: dict[str, float] = {}

    def watch(name: str, sock: socket.socket, since: float) -> None:
        if closed_by_server(sock, idle_s + 15):
            closed[name] = time.monotonic() - since

    silent = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(IDLER, 0))
    trickle = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(IDLER, 0))
    idle = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(IDLER, 0))
    try:
        started = time.monotonic()
        idle.sendall(request())
        assert read_response(idle, bytearray())[0] == 200
        scraped = time.monotonic()
        threads = [
            threading.Thread(target=watch, args=("silent", silent, started)),
            threading.Thread(target=watch, args=("idle", idle, scraped)),
        ]
        for t in threads:
            t.start()
        stop_trickle = threading.Event()

        def trickled() -> None:
            for byte in request():
                if stop_trickle.wait(1.0):
                    return
                try:
                    trickle.send(bytes([byte]))
                except OSError:
                    closed["trickle"] = time.monotonic() - started
                    return

        trickler = threading.Thread(target=trickled)
        trickler.start()
        for t in threads:
            t.join()
        stop_trickle.set()
        trickler.join()
    finally:
        for sock in (silent, trickle, idle):
            sock.close()
    print(f"closed after (s): { {k: round(v, 1) for k, v in closed.items()} }")
    assert header_s - 1 <= closed["silent"] <= header_s + 3, closed
    assert "trickle" in closed and closed["trickle"] <= header_s + 3, closed
    assert idle_s - 1 <= closed["idle"] <= idle_s + 3, closed


def test_the_listener_is_off_by_default_and_serves_one_node(tmp_path):
    """Off unless asked for (local use): no port of its own, a socket in the owner-only
    workdir that nothing connects to; on, it listens where the API does, for one node."""
    nodes = [Node(tmp_path / "node1", 8080, "127.0.0.1:8082")]
    off = render(GatewaySettings(18000, CLIENTS), nodes, tmp_path / "gateway")
    assert f"listen unix:{tmp_path / 'gateway' / METRICS_OFF_SOCKET};" in off
    assert off.count("listen 127.0.0.1:") == 1  # the API's port alone
    on = render(GatewaySettings(18000, CLIENTS, listen="0.0.0.0", metrics_port=9082), nodes, tmp_path / "gateway")
    assert "listen 0.0.0.0:9082;" in on and "server 127.0.0.1:8082;" in on
    assert f"limit_conn metrics_connections_per_address {SHIPPED.metrics_conn_per_address};" in on
    two = [*nodes, Node(tmp_path / "node2", 8090, "127.0.0.1:8092")]
    with pytest.raises(ValueError, match="one node"):
        render(GatewaySettings(18000, CLIENTS, metrics_port=9082), two, tmp_path / "gateway")
    with pytest.raises(ValueError, match="differ"):
        render(GatewaySettings(18000, CLIENTS, metrics_port=18000), nodes, tmp_path / "gateway")
    # a node listening on every address is reached on loopback; https it cannot proxy
    (tmp_path / "node1").mkdir()
    (tmp_path / "node1" / "config.properties").write_text(
        "inference_address=http://127.0.0.1:8080\nmetrics_address=http://0.0.0.0:8082\n"
    )
    assert Node.from_dir(tmp_path / "node1").metrics == "127.0.0.1:8082"
    (tmp_path / "node1" / "config.properties").write_text(
        "inference_address=http://127.0.0.1:8080\nmetrics_address=https://127.0.0.1:8082\n"
    )
    https = [Node.from_dir(tmp_path / "node1")]
    assert https[0].metrics is None
    render(GatewaySettings(18000, CLIENTS), https, tmp_path / "gateway")  # off: no matter
    with pytest.raises(ValueError, match="metrics_address"):
        render(GatewaySettings(18000, CLIENTS, metrics_port=9082), https, tmp_path / "gateway")
