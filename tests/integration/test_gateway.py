"""Scale-out: nginx (gateway/nginx.conf.template) in front of two real TorchServe nodes.

Both nodes serve traffic; a stopped node's traffic continues on the other; a client over
its rate gets 429 while another client is unaffected; clients need a gateway key, never
a node key; liveness and readiness answer without any key and cost the nodes no
inference; node key rotations and client key changes under load lose no request."""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from gateway.nginx import Node, node_socket
from helpers import (
    ONE_WORKER_MODELS,
    SteadyLoad,
    gateway_answers,
    gateway_in_front,
    keys_cli,
    log_length,
    metric,
    metric_samples,
    poll,
    settled,
)
from testbed.local_server import LocalTorchServe

# flood: the rate test's alone, so no other test's requests are in its bucket
CLIENTS = {"alice": "alice-key-0123456789", "bob": "bob-key-4567890123", "flood": "flood-key-0123456789"}
RATE, BURST = 20, 10
# Every route a client may call without a key
ANONYMOUS = (
    "/healthz",
    "/readyz",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/sentiment/ready",
    "/v1/models/sentiment",
)


def ask(gateway, text="I love this", client="alice", key=None):
    key = key if key is not None else CLIENTS[client]
    return requests.post(
        gateway.url("/predictions/sentiment"),
        json={"text": text},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def node_shares(gateway, since: int) -> dict[str, int]:
    """Predictions answered 200 per node since line `since` of the gateway's access log."""
    shares: dict[str, int] = {}
    for node, status in gateway_answers(gateway, since):
        if status == 200:
            shares[node] = shares.get(node, 0) + 1
    return shares


def paced(gateway, n, client="alice"):
    """n requests, one after the other, under the client's rate."""
    answers = []
    for _ in range(n):
        answers.append(ask(gateway, client=client))
        time.sleep(1.5 / RATE)
    return answers


@contextmanager
def two_nodes_behind_a_gateway(default_store, tmp: Path):
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        pytest.fail("nginx is missing: apt-get install nginx-light (.ci/run does)")
    nodes = [
        LocalTorchServe(model_store=default_store, workdir=tmp / f"node{i}", overrides={"models": ONE_WORKER_MODELS})
        for i in (1, 2)
    ]
    try:
        for node in nodes:
            node.start()
        with gateway_in_front(nodes, tmp / "gateway", CLIENTS, rate_per_s=RATE, burst=BURST) as gateway:
            yield gateway, nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def cluster(default_store, tmp_path_factory):
    """Two nodes and a gateway the module's tests share; none of them stops a node."""
    with two_nodes_behind_a_gateway(default_store, tmp_path_factory.mktemp("cluster")) as both:
        yield both


def test_clients_need_a_gateway_key(cluster):
    gateway, nodes = cluster
    assert ask(gateway).status_code == 200
    assert ask(gateway, key="").status_code == 401
    assert ask(gateway, key="wrong").json()["type"] == "Unauthorized"
    # a node's own key is not a gateway key
    assert ask(gateway, key=nodes[0].keys["inference"]).status_code == 401
    assert requests.get(gateway.url("/models"), timeout=10).status_code == 404  # no management through it


def until(condition, timeout=30.0):
    """Poll `condition` until it holds or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def inferences(nodes) -> float:
    return sum(metric(metric_samples(n), "ts_inference_requests_total") for n in nodes)


def test_probes_answer_without_a_key(cluster):
    gateway, _ = cluster
    live = requests.get(gateway.url("/healthz"), timeout=10)
    assert live.status_code == 200 and live.json()["status"] == "alive"
    ready = requests.get(gateway.url("/readyz"), timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    for path in ANONYMOUS:
        assert requests.get(gateway.url(path), timeout=10).status_code == 200, path


def test_an_anonymous_flood_of_every_open_route_costs_the_nodes_no_inference(cluster, tmp_path):
    """The nodes' inference count over ten quiet seconds (the pollers' own probes: this
    gateway's, checking once at its start, and the module's gateway's, every second), then
    over ten seconds of a flood of every anonymous route: the flood adds nothing (a probe
    landing on either side of a window's edge is the slack). The flood is itself limited
    per address."""
    _, nodes = cluster
    with gateway_in_front(nodes, tmp_path / "gateway", CLIENTS, poll_interval_s=3600) as gateway:
        window = 10.0

        def count_over(work):
            # the workers' metrics reach the frontend asynchronously: a count that stopped moving
            before = settled(lambda: inferences(nodes))
            work(time.monotonic() + window)
            return settled(lambda: inferences(nodes)) - before

        def flood_until(stop):
            def flood(path):
                statuses = []
                with requests.Session() as s:
                    while time.monotonic() < stop:
                        statuses.append(s.get(gateway.url(path), timeout=10).status_code)
                return statuses

            with ThreadPoolExecutor(max_workers=8) as pool:
                results.extend(pool.map(flood, ANONYMOUS + ANONYMOUS[:1]))

        results: list[list[int]] = []
        quiet = count_over(lambda stop: time.sleep(max(0.0, stop - time.monotonic())))
        flooded = count_over(flood_until)
    statuses = [s for r in results for s in r]
    assert len(statuses) > 1000, f"only {len(statuses)} requests: the flood did not run"
    assert flooded <= quiet + 2 * len(nodes), (
        f"{flooded} inferences during a flood of {len(statuses)} anonymous requests, {quiet} without"
    )
    assert set(statuses) <= {200, 429}
    refused = statuses.count(429)
    assert refused > len(statuses) / 2, f"{refused} of {len(statuses)} refused: the per-address limit did not bite"


def test_readiness_needs_model_workers_not_just_a_frontend(default_store, tmp_path):
    """A node whose frontend is up but has no model ready: alive, not ready, in every
    protocol's probes; and not ready either once the gateway drains."""
    node = LocalTorchServe(
        model_store=default_store, workdir=tmp_path / "node", overrides={"load_models": "", "models": "{}"}
    )
    node.start(wait_for_models=False)
    try:
        with gateway_in_front(node, tmp_path / "gateway", CLIENTS, rate_per_s=RATE, burst=BURST) as gateway:
            for path in ("/healthz", "/v2/health/live"):
                assert requests.get(gateway.url(path), timeout=10).status_code == 200, path
            not_ready = requests.get(gateway.url("/readyz"), timeout=10)
            assert not_ready.status_code == 503 and not_ready.json()["type"] == "NotReady"
            for path in ("/v2/health/ready", "/v2/models/sentiment/ready", "/v1/models/sentiment"):
                response = requests.get(gateway.url(path), timeout=10)
                assert response.status_code == 503 and response.json()["error"].startswith("NotReady"), path
            gateway.set_draining()
            for path in ("/readyz", "/v2/health/ready"):
                assert requests.get(gateway.url(path), timeout=10).status_code == 503, path
    finally:
        node.stop()


def test_over_the_rate_gets_429_and_other_clients_are_unaffected(cluster):
    gateway, _ = cluster
    with ThreadPoolExecutor(max_workers=40) as pool:
        started = time.monotonic()
        flood = pool.map(lambda _: ask(gateway, client="flood"), range(40))
        alice = pool.submit(paced, gateway, 5)
        answers = list(flood)
        elapsed = time.monotonic() - started
        alice_statuses = [r.status_code for r in alice.result()]
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 429}
    # at most the burst plus what the rate refilled while the flood lasted got through
    assert statuses.count(200) <= BURST + 1 + RATE * elapsed, (statuses, elapsed)
    assert statuses.count(429) >= 5, statuses
    assert alice_statuses == [200] * 5
    assert {a.json()["type"] for a in answers if a.status_code == 429} == {"TooManyRequests"}


def rotate_inference_key(node):
    rotated = keys_cli(node, "rotate", "inference")
    assert rotated.returncode == 0, rotated.stderr


def test_node_key_rotations_under_load_lose_no_request(cluster):
    """Through a gateway with no rate limit to speak of: twelve keep-alive clients without
    pause while each node's inference key is rotated ten times (TorchServe refuses the old
    key the moment it makes the new one); not one request may fail, and no reload is
    needed. Without the gateway's resend of a request refused for its key (gateway.js
    `rotating`), this lost 4 of 6,780 (each a 400 InvalidKeyException), and the
    supervisor's schedule below 5 of 4,288."""
    _, nodes = cluster
    old_keys = [n.keys["inference"] for n in nodes]
    with gateway_in_front(nodes, Path(nodes[0].workdir).parent / "rotation-gateway", CLIENTS) as gateway:
        # single texts, and lists of 32 (answers of several KB, which njs passes back whole)
        with (
            SteadyLoad(gateway, [lambda: CLIENTS["alice"]], clients_per_key=12) as load,
            SteadyLoad(gateway, [lambda: CLIENTS["bob"]], clients_per_key=2, texts=32) as lists,
        ):
            time.sleep(2)
            for _ in range(10):
                for node in nodes:
                    rotate_inference_key(node)
                    time.sleep(0.1)
            time.sleep(2)
    for what in (load, lists):
        assert what.failed == [], f"{len(what.failed)} of {what.ok + len(what.failed)} failed: {what.failed[:5]}"
    assert load.ok > 100 and lists.ok > 10, f"only {load.ok} and {lists.ok} requests: the load did not run"
    assert [Node.from_dir(n.workdir).key() for n in nodes] != old_keys  # the keys really changed


def test_a_changed_clients_file_counts_at_once_and_loses_no_request(cluster, tmp_path):
    """The gateway reads its clients file (a mounted Secret) on every request: a key
    added is taken, a key removed is refused, and the clients whose keys stay lose nothing."""
    _, nodes = cluster
    clients_file = tmp_path / "clients"
    carol, dave = "carol-key-" + "c" * 54, "dave-key-" + "d" * 247  # 64 and 256 characters

    def write(lines):  # as the kubelet updates a Secret: a new file swapped in
        (tmp_path / "clients.new").write_text("".join(f"{line}\n" for line in lines))
        os.replace(tmp_path / "clients.new", clients_file)

    write([f"carol={carol}"])
    with gateway_in_front(nodes, tmp_path / "gateway", clients_file) as gateway:
        assert ask(gateway, key=dave).status_code == 401
        with SteadyLoad(gateway, [lambda: carol]) as load:
            time.sleep(1)
            write([f"carol={carol}", f"dave={dave}"])
            assert ask(gateway, key=dave).status_code == 200
            write([f"carol={carol}"])
            assert ask(gateway, key=dave).status_code == 401
            time.sleep(1)
    assert load.failed == [] and load.ok > 20, (load.ok, load.failed[:5])


def test_both_nodes_serve_and_a_stopped_node_fails_over(default_store, tmp_path):
    """Stops both nodes: a cluster of its own, so that no test after it finds them down."""
    with two_nodes_behind_a_gateway(default_store, tmp_path) as (gateway, nodes):
        both_serve_then_each_stop(gateway, nodes)


def both_serve_then_each_stop(gateway, nodes):
    since = settled(lambda: log_length(gateway))  # earlier tests' requests all logged
    answers = paced(gateway, 20)
    assert [a.status_code for a in answers] == [200] * 20
    shares = poll(lambda: node_shares(gateway, since), lambda s: sum(s.values()) >= 20)
    assert len(shares) == 2 and sum(shares.values()) == 20 and min(shares.values()) >= 5, shares

    nodes[0].stop()  # by its pid; the gateway is not told
    since = log_length(gateway)
    answers = paced(gateway, 20)
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
    survivor = node_shares(gateway, since)
    assert survivor == {f"unix:{node_socket(gateway.workdir, 2)}": 20}, survivor
    assert requests.get(gateway.url("/readyz"), timeout=10).status_code == 200

    nodes[1].stop()
    # the poller notices within its period (a second) and a probe's time
    assert until(lambda: requests.get(gateway.url("/readyz"), timeout=10).status_code == 503)
    down = ask(gateway)
    assert down.status_code == 502 and down.json()["type"] == "NodeUnavailable"
