"""The key rotation lock (common/keys.py) through the real gateway in front of a real
TorchServe: while it is held requests go on at once, and one refused for the old key goes
again with the new key the moment the lock is gone; a lock left behind by a rotation that
was killed is not waited for once it is stale (LOCK_MAX_AGE_S, the cap the gateway reads
from its config), and the readiness poller tracks TorchServe again.

Assertions are on the order of events; the only durations asserted are bounds stated as
the documented cap."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from common.keys import LOCK_MAX_AGE_S, ROTATION_LOCK, lock_is_fresh, release_lock, take_lock
from common.net import http
from common.paths import ROOT
from common.torchserve_files import KEY_FILE, read_keys
from helpers import ONE_WORKER_MODELS, gateway_in_front, metric, metric_samples, poll, predict
from testbed.local_server import LocalTorchServe

CLIENTS = {"alice": "alice-key-0123456789"}
POLL_INTERVAL_S = 1.0  # the gateway's readiness poller's period (GatewaySettings' default)

# A rotation as sentiment-keys runs it (common.keys.rotate), whose token call gets no
# answer: it takes the lock, then waits in the call until the test kills it.
KILLED_ROTATION = """
import sys
from pathlib import Path
from common.keys import rotate
rotate(sys.argv[1], Path(sys.argv[2]), "inference")
"""


def ask(gateway, body=None, route="predictions"):
    return requests.post(
        gateway.url(f"/{route}/sentiment"),
        json={"text": "I love this"} if body is None else body,
        headers={"Authorization": f"Bearer {CLIENTS['alice']}"},
        timeout=120,
    )


def readyz(gateway) -> int:
    return requests.get(gateway.url("/readyz"), timeout=10).status_code


def replace(path, content: bytes) -> None:
    """Write a file whole, as TorchServe's key file is swapped in for a reader."""
    tmp = path.with_name(path.name + ".test-tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def start_node(default_store, workdir) -> LocalTorchServe:
    return LocalTorchServe(model_store=default_store, workdir=workdir, overrides={"models": ONE_WORKER_MODELS}).start()


@pytest.fixture(scope="module")
def held(default_store, tmp_path_factory):
    """A TorchServe of its own (the tests rotate its key) and the gateway in front."""
    tmp = tmp_path_factory.mktemp("held")
    node = start_node(default_store, tmp / "node")
    try:
        with gateway_in_front(node, tmp / "gateway", CLIENTS) as gateway:
            yield gateway, node
    finally:
        node.stop()


def test_a_request_refused_for_the_old_key_goes_again_when_the_lock_is_gone_with_the_new_one(held):
    """A rotation's lock is taken (as rotate() takes it), the key switched through
    TorchServe's token API, and the key file still names the old, refused key: a request
    sent now goes on with it and is refused by TorchServe. The gateway sends it again once
    the lock is gone: the test writes the new key file and removes the lock; the request
    is answered 200, after both, with the new key."""
    gateway, node = held
    key_file = node.workdir / KEY_FILE
    old_file = key_file.read_bytes()
    keys = read_keys(key_file)
    assert ask(gateway).status_code == 200

    lock, content = take_lock(node.workdir)
    taken = time.monotonic()
    events: list[str] = []
    try:
        status, _ = http(
            node.url("management", "/token?type=inference"), headers={"Authorization": f"Bearer {keys['API']}"}
        )
        assert status == 200
        new_file = key_file.read_bytes()
        assert read_keys(key_file)["inference"] != keys["inference"]
        replace(key_file, old_file)  # the instant before TorchServe's new file is in place
        assert predict(node, b'{"text": "hi"}', token=keys["inference"]).status_code == 400  # refused

        answers: list[requests.Response] = []

        def send():
            answers.append(ask(gateway))
            events.append("answered")

        sender = threading.Thread(target=send)
        sender.start()
        sender.join(0.3)  # a moment to reach TorchServe (a refusal passed back is answered within it)
        events.append("new key file written")
        replace(key_file, new_file)
        events.append("lock removed")
        release_lock(lock, content)
        sender.join(60)
    finally:
        release_lock(lock, content)
    answered = time.monotonic()
    assert events == ["new key file written", "lock removed", "answered"]
    assert answers[0].status_code == 200 and answers[0].json()["label"] == "positive", answers[0].text
    assert answered < taken + LOCK_MAX_AGE_S  # it went on at the removal, not at the cap
    assert ask(gateway).status_code == 200


def test_while_the_lock_is_held_requests_are_answered_at_once_and_run_once(held):
    """With the lock in place and the key unchanged, a prediction is answered 200 and a
    request the handler refuses gets its own 400 and message, both before the lock is
    removed: nothing waits for a rotation but a request refused for its key. Each went to
    TorchServe once (its count of inference requests grew by two)."""
    gateway, node = held
    with gateway.poller.paused():  # its probes would count: the count is of this test's requests
        lock, content = take_lock(node.workdir)
        try:
            before = metric(metric_samples(node), "ts_inference_requests_total")
            good = ask(gateway)
            bad = ask(gateway, {"txt": "I love this"})
            assert lock.exists()
            after = metric(metric_samples(node), "ts_inference_requests_total")
        finally:
            release_lock(lock, content)
    assert good.status_code == 200 and good.json()["label"] == "positive", good.text
    assert bad.status_code == 400 and bad.json()["type"] == "InvalidInput", bad.text
    assert after == before + 2  # each sent once


def test_while_the_lock_is_held_explanations_keep_their_limit_of_one_per_node(held):
    """A rotating request is routed before nginx counts its limits: the rotating
    explanation location counts them again. Four explanations at once during a rotation:
    one runs, the others get the gateway's own 429 (its JSON refusal, with Retry-After),
    as without a rotation."""
    gateway, node = held
    lock, content = take_lock(node.workdir)
    body = {"text": "I love this, it is the best thing I have bought in years"}
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(lambda _: ask(gateway, body, "explanations"), range(4)))
        assert lock.exists()
    finally:
        release_lock(lock, content)
    statuses = sorted(a.status_code for a in answers)
    assert statuses[0] == 200 and statuses[-1] == 429, [(a.status_code, a.text[:100]) for a in answers]
    assert set(statuses) == {200, 429}
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.json()["type"] == "TooManyRequests" and refused.headers["Retry-After"], refused.text


def test_a_lock_left_by_a_killed_rotation_is_ignored_once_stale(default_store, tmp_path):
    """The rotation is killed (SIGKILL) inside its token call, its lock in place. Once the
    lock is older than the cap, predictions are answered 200 without waiting for it, and
    /readyz follows TorchServe again: 503 within a few poll periods of its stop."""
    node = start_node(default_store, tmp_path / "node")
    silent = socket.socket()  # a management API that takes the call and never answers
    try:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with gateway_in_front(node, tmp_path / "gateway", CLIENTS, poll_interval_s=POLL_INTERVAL_S) as gateway:
            assert ask(gateway).status_code == 200
            lock = node.workdir / ROTATION_LOCK
            rotation = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    KILLED_ROTATION,
                    f"http://127.0.0.1:{silent.getsockname()[1]}",
                    str(node.workdir / KEY_FILE),
                ],
                cwd=ROOT,
            )
            call = None
            try:
                assert poll(lock.exists, bool, timeout=30)
                silent.settimeout(30)
                call, _ = silent.accept()  # past the guard's wait: inside its token call
            finally:
                os.kill(rotation.pid, signal.SIGKILL)
                rotation.wait(timeout=10)
                if call is not None:
                    call.close()
            assert rotation.returncode == -signal.SIGKILL
            assert json.loads(lock.read_text())["pid"] == rotation.pid  # left behind: it records whose

            assert not poll(lambda: lock_is_fresh(lock), lambda fresh: not fresh, timeout=LOCK_MAX_AGE_S + 5)
            for _ in range(5):
                sent = time.monotonic()
                answer = ask(gateway)
                assert answer.status_code == 200 and answer.json()["label"] == "positive", answer.text
                assert time.monotonic() - sent < LOCK_MAX_AGE_S  # not held: the cap is not waited
            assert lock.exists()  # nobody removed it: it is ignored

            assert readyz(gateway) == 200
            node.stop()
            assert poll(lambda: readyz(gateway), lambda status: status == 503, timeout=5 * POLL_INTERVAL_S) == 503
    finally:
        silent.close()
        node.stop()
