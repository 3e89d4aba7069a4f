"""Scale-out: nginx (gateway/nginx.conf.template) in front of two real TorchServe nodes.

Both nodes serve traffic; a stopped node's traffic continues on the other; a client over
its rate gets 429 while another client is unaffected; clients need a gateway key, never
a node key; liveness and readiness answer without any key while token auth stays on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from server.paths import ROOT
from helpers import ONE_WORKER_MODELS, gateway_in_front, metric, metric_samples
from clients.torchserve import KEY_FILE
from gateway.nginx import Node
from testbed.local_server import LocalTorchServe

CLIENTS = {"alice": "alice-key-0123", "bob": "bob-key-4567"}
RATE, BURST = 20, 10


def ask(gateway, text="I love this", client="alice", key=None):
    key = key if key is not None else CLIENTS[client]
    return requests.post(gateway.url("/predictions/sentiment"), json={"text": text},
                         headers={"Authorization": f"Bearer {key}"}, timeout=60)


def served(node) -> float:
    """Requests the node's handler has seen."""
    time.sleep(0.5)  # the workers' metrics reach the frontend asynchronously
    return metric(metric_samples(node), "SentimentBatchSize_sum")


def paced(gateway, n, client="alice"):
    """n requests, one after the other, under the client's rate."""
    answers = []
    for _ in range(n):
        answers.append(ask(gateway, client=client))
        time.sleep(1.5 / RATE)
    return answers


@pytest.fixture(scope="module")
def cluster(default_store, tmp_path_factory):
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        pytest.fail("nginx is missing: apt-get install nginx-light (.ci/run does)")
    tmp = tmp_path_factory.mktemp("cluster")
    nodes = [LocalTorchServe(model_store=default_store, workdir=tmp / f"node{i}",
                             overrides={"models": ONE_WORKER_MODELS}) for i in (1, 2)]
    try:
        for node in nodes:
            node.start()
        with gateway_in_front(nodes, tmp / "gateway", CLIENTS, rate_per_s=RATE, burst=BURST) as gateway:
            yield gateway, nodes
    finally:
        for node in nodes:
            node.stop()


def test_clients_need_a_gateway_key(cluster):
    gateway, nodes = cluster
    assert ask(gateway).status_code == 200
    assert ask(gateway, key="").status_code == 401
    assert ask(gateway, key="wrong").json()["type"] == "Unauthorized"
    # a node's own key is not a gateway key
    assert ask(gateway, key=nodes[0].keys["inference"]).status_code == 401
    assert requests.get(gateway.url("/models"), timeout=10).status_code == 404  # no management through it


def test_probes_answer_without_a_key(cluster):
    gateway, _ = cluster
    live = requests.get(gateway.url("/healthz"), timeout=10)
    assert live.status_code == 200 and live.json()["status"] == "Healthy"
    ready = requests.get(gateway.url("/readyz"), timeout=10)
    assert ready.status_code == 200 and ready.json()["label"] in ("negative", "positive")


def test_readiness_needs_model_workers_not_just_a_frontend(default_store, tmp_path):
    """A node whose frontend is up but has no model ready: alive, not ready, in every
    protocol's probes; and not ready either once the gateway drains."""
    node = LocalTorchServe(model_store=default_store, workdir=tmp_path / "node",
                           overrides={"load_models": "", "models": "{}"})
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
    time.sleep(1)  # let earlier requests leave the bucket
    with ThreadPoolExecutor(max_workers=40) as pool:
        started = time.monotonic()
        flood = pool.map(lambda _: ask(gateway, client="bob"), range(40))
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


def test_gateway_follows_a_node_key_rotation_on_reload(cluster):
    gateway, nodes = cluster
    time.sleep(1)
    for node in nodes:
        rotated = subprocess.run(
            [sys.executable, "-m", "clients.keys", "rotate", "inference",
             "--config", str(node.workdir / "config.properties"), "--key-file", str(node.workdir / KEY_FILE)],
            capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert rotated.returncode == 0, rotated.stderr
    # nginx still sends the old node keys: the nodes refuse them
    assert {a.status_code for a in paced(gateway, 4)} == {400}
    gateway.reload([Node.from_dir(n.workdir) for n in nodes])  # what SIGHUP to sentiment-gateway does
    time.sleep(1)  # nginx starts new workers with the new config
    assert [a.status_code for a in paced(gateway, 6)] == [200] * 6


def test_both_nodes_serve_and_a_stopped_node_fails_over(cluster):
    gateway, nodes = cluster
    time.sleep(1)
    before = [served(n) for n in nodes]
    answers = paced(gateway, 20)
    assert [a.status_code for a in answers] == [200] * 20
    shares = [served(n) - b for n, b in zip(nodes, before)]
    assert sum(shares) == 20 and min(shares) >= 5, f"requests per node: {shares}"

    nodes[0].stop()  # by its pid; the gateway is not told
    survivor_before = served(nodes[1])
    answers = paced(gateway, 20)
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
    assert served(nodes[1]) - survivor_before == 20
    assert requests.get(gateway.url("/readyz"), timeout=10).status_code == 200

    nodes[1].stop()
    assert requests.get(gateway.url("/readyz"), timeout=10).status_code == 503
    down = ask(gateway)
    assert down.status_code == 502 and down.json()["type"] == "NodeUnavailable"
