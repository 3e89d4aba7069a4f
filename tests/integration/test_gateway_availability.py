"""What one client, slow or hostile, can cost the others and the probes: real nginx in
front of a real TorchServe, with the shipped limits, spoken to over raw sockets from
loopback addresses of their own (127.0.0.N: each a client address, as a pod sees them).

Each attack uses all of the limit it meets, slowly (bodies trickled a byte at a time
within the body timeout, connections held open), while another client and the probes
are measured; every test counts what the others lost."""

from __future__ import annotations

import json
import resource
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.nginx import GatewaySettings, in_flight_per_key
from gateway.refusals import refusals
from helpers import closed_by_server, gateway_in_front, poll, raw_exchange, read_response, tiny_node
from testbed.local_server import models_setting

CLIENTS = {
    "alice": "alice-key-0123456789abcdef",
    "mallory": "mallory-key-0123456789abcdef",
    "bob": "bob-key-0123456789abcdef",
    "carol": "carol-key-0123456789abcdef",
}
SHIPPED = GatewaySettings(0, {})  # the shipped limits, read from the settings' defaults
# a pause between two bytes of a trickled body: under the body timeout, so nginx waits on
TRICKLE_EVERY_S = SHIPPED.client_timeout_s / 4
# how long each attack is kept up while the others are measured
ATTACK_S = 3 * SHIPPED.client_timeout_s / 2

ATTACKER, OTHER, PROBER, ANONYMOUS = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"


@pytest.fixture(scope="module")
def shipped(server, tmp_path_factory):
    """The gateway with its shipped limits (no test lifts them) in front of the shared server."""
    shipped_limits = {
        name: getattr(SHIPPED, name)
        for name in (
            "rate_per_s",
            "burst",
            "conn_per_key",
            "conn_per_address",
            "in_flight_per_node",
            "explain_rate_per_s",
            "explain_burst",
            "auth_failure_rate_per_s",
            "auth_failure_burst",
        )
    }
    with gateway_in_front(server, tmp_path_factory.mktemp("shipped"), CLIENTS, **shipped_limits) as gateway:
        yield gateway


def post(path: str, body: bytes, key: str | None = None, content_type: str = "application/json", length=None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\n{auth}Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    ).encode() + body


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: gateway\r\n{extra}\r\n".encode()


class Trickle:
    """Connections from one address, each sent `head` at once and then one more byte
    every TRICKLE_EVERY_S until stopped; the ones the gateway closes are counted."""

    def __init__(self, port: int, source: str, heads: list[bytes]):
        self.socks = []
        for head in heads:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
            sock.sendall(head)
            self.socks.append(sock)
        self.closed: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(TRICKLE_EVERY_S):
            for i, sock in enumerate(self.socks):
                if i not in self.closed:
                    try:
                        sock.sendall(b" ")
                    except OSError:
                        self.closed.add(i)

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for sock in self.socks:
            sock.close()


class Watch:
    """Probes and another client's predictions, one after another from their own
    addresses until stopped: every answer's status, by what was asked."""

    def __init__(self, port: int, requests: dict[str, tuple[str, bytes]]):
        self.port, self.requests = port, requests
        self.statuses: dict[str, list[int | str]] = {name: [] for name in requests}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(name,), daemon=True) for name in requests]

    def _run(self, name: str) -> None:
        source, data = self.requests[name]
        while not self._stop.is_set():
            try:
                status: int | str = raw_exchange(self.port, data, source=source, timeout=20)[0]
            except OSError as e:
                status = type(e).__name__
            self.statuses[name].append(status)
            self._stop.wait(0.1)

    def failures(self) -> dict[str, list[int | str]]:
        return {name: [s for s in got if s != 200] for name, got in self.statuses.items()}

    def __enter__(self) -> Watch:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def watch_others(port: int) -> Watch:
    return Watch(
        port,
        {
            "healthz": (PROBER, get("/healthz")),
            "readyz": (PROBER, get("/readyz")),
            "alice": (OTHER, post("/predictions/sentiment", b'{"text": "I love this"}', CLIENTS["alice"])),
        },
    )


def test_one_key_trickling_every_body_it_may_open_takes_nothing_from_others(shipped):
    """mallory opens as many predictions as its key may have in progress and trickles their
    1 MB bodies a byte at a time; anonymous connections trickle beside it. Meanwhile the
    probes and alice are answered, every time, and mallory's next request is refused."""
    port = shipped.settings.port
    huge = post("/predictions/sentiment", b"", CLIENTS["mallory"], length=1_000_000)
    anonymous = [post("/predictions/sentiment", b"", None, length=1_000_000), get("/healthz", "Content-Length: 16\r\n")]
    with (
        Trickle(port, ATTACKER, [huge] * SHIPPED.conn_per_key) as held,
        Trickle(port, ANONYMOUS, anonymous * 32),
        watch_others(port) as others,
    ):
        over = poll(
            lambda: raw_exchange(port, post("/predictions/sentiment", b'{"text": "hi"}', CLIENTS["mallory"]), ATTACKER),
            lambda r: r[0] == 429,
        )
        time.sleep(ATTACK_S)
        still_held = len(held.socks) - len(held.closed)
    assert over[0] == 429 and json.loads(over[2])["type"] == "TooManyRequests", over
    assert still_held == SHIPPED.conn_per_key, "the gateway closed the trickled bodies: the attack did not hold"
    assert all(len(got) >= 10 for got in others.statuses.values()), others.statuses
    assert others.failures() == {"healthz": [], "readyz": [], "alice": []}
    print(f"answered meanwhile: { {name: len(got) for name, got in others.statuses.items()} }")


def test_one_address_opening_thousands_of_connections_leaves_other_addresses_served(shipped):
    """More connections from one address than the gateway's worker has room for (each takes
    three of its worker_connections): all but the cap's are closed at once, the cap's are
    held, and other addresses are answered throughout."""
    port = shipped.settings.port
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = SHIPPED.worker_connections // 3 + 1000
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, wanted + 1000)), hard))
    flood = []
    try:
        with watch_others(port) as others:
            flood.extend(
                socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(ATTACKER, 0))
                for _ in range(wanted)
            )
            open_after = poll(
                lambda: sum(not closed_by_server(s, 0.01) for s in flood),
                lambda n: n <= SHIPPED.conn_per_address,
                timeout=SHIPPED.client_timeout_s,
                interval=0.5,
            )
            time.sleep(2)
    finally:
        for sock in flood:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert open_after <= SHIPPED.conn_per_address, f"{open_after} of {wanted} connections from one address open"
    assert all(len(got) >= 5 for got in others.statuses.values()), others.statuses
    assert others.failures() == {"healthz": [], "readyz": [], "alice": []}
    print(
        f"{wanted} connections, {open_after} held; answered meanwhile: "
        f"{ {name: len(got) for name, got in others.statuses.items()} }"
    )


def test_a_trickled_explanation_holds_no_explanation_slot(shipped):
    """mallory trickles an explanation's body; alice's explanation is answered meanwhile
    (the slot is a node's, taken once a body is in)."""
    port = shipped.settings.port
    body = b'{"text": "I love this", "steps": 4}'
    with Trickle(port, ATTACKER, [post("/explanations/sentiment", b"", CLIENTS["mallory"], length=len(body) + 10_000)]):
        time.sleep(TRICKLE_EVERY_S)
        status, _, answer = raw_exchange(
            port, post("/explanations/sentiment", body, CLIENTS["alice"]), OTHER, timeout=60
        )
    assert status == 200, answer[:300]
    assert json.loads(answer)["label"] in ("positive", "negative")


def test_failed_authentications_are_limited_per_address(shipped):
    """Wrong keys in a row from one address: 401 up to the burst (and the rate since), then
    429 with Retry-After; another address's wrong key is still 401, and a right key from
    the attacking address is served."""
    port = shipped.settings.port
    wrong = post("/predictions/sentiment", b'{"text": "x"}', "wrong-key-" + "x" * 30)
    started = time.monotonic()
    statuses = [raw_exchange(port, wrong, ATTACKER)[0] for _ in range(3 * SHIPPED.auth_failure_burst)]
    elapsed = time.monotonic() - started
    first_429 = statuses.index(429)
    allowed = SHIPPED.auth_failure_burst + 1 + int(elapsed * SHIPPED.auth_failure_rate_per_s) + 1
    assert set(statuses) == {401, 429} and statuses[:first_429] == [401] * first_429, statuses
    assert first_429 >= SHIPPED.auth_failure_burst and statuses.count(401) <= allowed, statuses
    status, headers, body = raw_exchange(port, wrong, ATTACKER)
    assert status == 429 and headers["retry-after"] == "1", (status, headers)
    assert json.loads(body)["type"] == "TooManyRequests"
    assert raw_exchange(port, wrong, OTHER)[0] == 401
    good = post("/predictions/sentiment", b'{"text": "I love this"}', CLIENTS["alice"])
    assert raw_exchange(port, good, ATTACKER)[0] == 200


def test_a_refused_body_is_not_drained_at_length(shipped):
    """A request refused before its body (no key) announces 1 MB and trickles it: the
    gateway answers, drains for at most lingering_time, and closes."""
    port = shipped.settings.port
    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(ANONYMOUS, 0)) as sock:
        sock.sendall(post("/predictions/sentiment", b"", None, length=1_000_000))
        status, _, _ = read_response(sock, bytearray())
        assert status == 401
        deadline = time.monotonic() + SHIPPED.lingering_time_s + 3
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b" ")
            except OSError:
                closed = True
                break
            closed = closed_by_server(sock, 0.3)
        assert closed, "the gateway kept draining the refused body past lingering_time"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/SENTIMENT:predict",
        "/v1/models/SeNtImEnT",
        "/HEALTHZ",
        "/Readyz",
        "/Predictions/sentiment",
        "/predictions/Sentiment",
        "/explanations/SENTIMENT",
        "/V2/health/ready",
    ],
)
def test_routes_match_case_and_all(shipped, path):
    status, _, body = raw_exchange(
        shipped.settings.port, post(path, b'{"text": "I love this"}', CLIENTS["alice"]), OTHER
    )
    assert status == 404, (path, status, body[:200])
    assert raw_exchange(shipped.settings.port, get(path), OTHER)[0] == 404


@pytest.mark.parametrize(
    "content_type, allowed",
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("APPLICATION/JSON", True),
        ("text/plain", True),
        ("text/plain;charset=utf-8", True),
        ("\x1capplication/x-www-form-urlencoded", False),
        ("\x1capplication/json", False),
        ("application/x-www-form-urlencoded", False),
        (" multipart/form-data; boundary=x", False),
        ("application/xml", False),
        ("text/html", False),
        ("application/json\x1c", False),
    ],
)
def test_bodies_are_taken_by_an_allow_list_of_media_types(shipped, content_type, allowed):
    body = b'{"text": "I love this"}' if "json" in content_type.lower() else b"I love this"
    data = post("/predictions/sentiment", body, CLIENTS["alice"], content_type=content_type)
    status, headers, answer = raw_exchange(shipped.settings.port, data, OTHER)
    if allowed:
        assert status == 200, (content_type, answer[:200])
    else:
        assert status in (400, 415), (content_type, status, answer[:200])
        assert headers["content-type"] == "application/json" and "code" in json.loads(answer)


@pytest.mark.parametrize(
    "request_bytes, status, refusal",
    [
        (b"TRACE / HTTP/1.1\r\nHost: gateway\r\n\r\n", 405, "method_not_allowed"),
        (get("/refusals/native/unauthorized.json"), 404, "not_found"),
        (get("/refusals/native/unauthorized.json?x=1"), 404, "not_found"),
        (get("/healthz", "Content-Length: 100\r\n") + b"x" * 100, 413, "no_body"),
        (get("/readyz", "Content-Length: 100\r\n") + b"x" * 100, 413, "no_body"),
        (get("/" + "a" * 9000), 414, "uri_too_long"),
        (get("/healthz", "X-Long: " + "a" * 9000 + "\r\n"), 431, "header_too_large"),
        (
            b"POST /predictions/sentiment HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "not_implemented",
        ),
        (b"GET /healthz HTTP/2.0\r\nHost: gateway\r\n\r\n", 505, "http_version"),
        (b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nBad\x01Header: x\r\n\r\n", 400, "bad_request"),
    ],
)
def test_every_answer_nginx_makes_is_json(shipped, request_bytes, status, refusal):
    got, headers, body = raw_exchange(shipped.settings.port, request_bytes, OTHER)
    expected = refusals(shipped.settings.model, shipped.settings.max_body)[refusal]
    assert got == status, (got, body[:300])
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == json.loads(expected.body("native"))
    assert not {"server", "etag", "last-modified"} & set(headers), headers


def test_probes_say_nothing_of_what_serves_them(shipped):
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/v2"):
        status, headers, _ = raw_exchange(shipped.settings.port, get(path), PROBER)
        assert status == 200, path
        assert not {"server", "etag", "last-modified"} & set(headers), (path, headers)


@pytest.fixture(scope="module")
def slow_node(tiny_model_dir, tmp_path_factory):
    """A node of the tiny model that takes 2 s a request, one at a time, behind a gateway
    that lets it have 4 in flight: 3 per key. Friendlier than production in two ways, so
    that what waits in TorchServe's queue is only the test's: the readiness poller polls
    every 30 s (not every second), and the queue budget is a minute (not one second)."""
    tmp = tmp_path_factory.mktemp("slow")
    options = ["queue_budget_ms=60000"]
    with (
        tiny_node(tiny_model_dir, tmp, options, {"models": models_setting(1, 1)}, latency_ms=2000) as node,
        gateway_in_front(node, tmp / "gateway", CLIENTS, in_flight_per_node=4, poll_interval_s=30) as gateway,
    ):
        assert in_flight_per_key(gateway.settings) == 3  # the shipped share: three quarters
        yield gateway


def test_a_full_node_refuses_new_requests_not_the_probes_and_no_key_takes_it_all(slow_node):
    """Overload that reaches a node's in-flight cap (4): alice may have only her share of
    it (3; her fourth request is refused at once), bob takes the rest, carol is refused
    while it is full, and the probes stay 200 throughout."""
    port = slow_node.settings.port
    share = in_flight_per_key(slow_node.settings)
    rest = slow_node.settings.in_flight_per_node - share

    def ask(name, source):
        return raw_exchange(port, post("/predictions/sentiment", b'{"text": "hi"}', CLIENTS[name]), source, timeout=60)

    with watch_others_probes(port) as probes, ThreadPoolExecutor(max_workers=8) as pool:
        alice = [pool.submit(ask, "alice", OTHER) for _ in range(share + 1)]
        alice_refused = poll(lambda: [f.result() for f in alice if f.done()], lambda done: len(done) >= 1)
        bob = [pool.submit(ask, "bob", ANONYMOUS) for _ in range(rest)]
        time.sleep(0.5)
        carol = ask("carol", ATTACKER)
        answers = {"alice": [f.result() for f in alice], "bob": [f.result() for f in bob]}
    assert [a[0] for a in alice_refused] == [429], alice_refused
    assert json.loads(alice_refused[0][2])["type"] == "TooManyRequests"
    assert sorted(a[0] for a in answers["alice"]) == [200] * share + [429]
    assert [a[0] for a in answers["bob"]] == [200] * rest
    assert carol[0] == 429 and carol[1]["retry-after"] == "1", carol
    assert probes.failures() == {"healthz": [], "readyz": []}
    assert all(len(got) >= 10 for got in probes.statuses.values())


def watch_others_probes(port: int) -> Watch:
    return Watch(port, {"healthz": (PROBER, get("/healthz")), "readyz": (PROBER, get("/readyz"))})
