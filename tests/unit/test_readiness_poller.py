"""The readiness poller (gateway/nginx.py) against fake nodes that are real tiny HTTP
servers on free ports, and the rotation lock it shares with the gateway's guard and the
supervisor (common/keys.py): who took it, when it is stale, who clears it.

A node that answers a truncated response, a garbage status line, or closes the
connection, or whose key_file.json is odd, is not ready; the poller's thread goes on, and
a good node beside it stays ready."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from common.keys import (
    GUARD_BEFORE_S,
    LOCK_MAX_AGE_S,
    ROTATION_LOCK,
    ROTATION_TIMEOUT_S,
    lock_age,
    lock_is_fresh,
    release_lock,
    rotate,
    take_lock,
)
from common.torchserve_files import KEY_FILE
from gateway.nginx import STATIC_DIR, GatewaySettings, Node, ReadinessPoller, render

GOOD_KEY = "good-node-key-0123"

# What a fake node sends back to a prediction: raw bytes (None: it closes without a word),
# and what http.client raises on each (None: an OSError, an ordinary not-ready)
RAISES = {
    "truncated": "IncompleteRead",
    "garbage_status_line": "BadStatusLine",
    "non_numeric_status": "BadStatusLine",
    "too_many_headers": "HTTPException",
    "bad_chunk": "IncompleteRead",
    "closes": None,  # RemoteDisconnected, a ConnectionResetError
}
ANSWERS: dict[str, bytes | None] = {
    "good": b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{"label": "positive"}',
    "truncated": b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"label": "pos',
    "garbage_status_line": b"SPROCKETS 200 fine\r\n\r\n",
    "non_numeric_status": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "too_many_headers": b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 200 + b"Content-Length: 0\r\n\r\n",
    "bad_chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "closes": None,
    "busy": b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
}
ODD_KEY_FILES = {
    "a_list": "[1, 2]",
    "null": "null",
    "a_number_as_entry": json.dumps({"inference": 5}),
    "a_number_as_key": json.dumps({"inference": {"key": 5}}),
    "not_utf8": b"\xff\xfe{",
    "a_directory": None,
}


class FakeNode:
    """A tiny HTTP server on a free loopback port that answers predictions with
    ANSWERS[self.behaviour] (changeable while it runs) when the key is GOOD_KEY, and 400
    otherwise; /ping answers 200."""

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.predictions = 0  # predictions received
        node = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                node.predictions += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.close_connection = True
                if self.headers.get("Authorization") != f"Bearer {GOOD_KEY}":
                    self.wfile.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    return
                answer = ANSWERS[node.behaviour]
                if answer is not None:
                    self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def node(self, directory: Path, key_file: str | bytes | None = "") -> Node:
        """A node directory whose key file holds `key_file` ("": GOOD_KEY, as TorchServe
        writes it; None: a directory where the file should be), served by this fake."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / KEY_FILE
        if key_file is None:
            path.mkdir()
        else:
            text = json.dumps({"inference": {"key": GOOD_KEY}}) if key_file == "" else key_file
            path.write_bytes(text.encode() if isinstance(text, str) else text)
        return Node(directory, self.port)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fakes():
    started: list[FakeNode] = []

    def start(behaviour: str) -> FakeNode:
        started.append(FakeNode(behaviour))
        return started[-1]

    yield start
    for fake in started:
        fake.stop()


def poller_for(tmp_path: Path, nodes: list[Node], interval: float = 0.05) -> ReadinessPoller:
    workdir = tmp_path / "gateway"
    (workdir / STATIC_DIR).mkdir(parents=True, exist_ok=True)
    return ReadinessPoller(workdir, nodes, "sentiment", interval, timeout=3.0)


def rounds(poller: ReadinessPoller, n: int, timeout: float = 20.0) -> None:
    """Wait until `n` more rounds have ended."""
    for _ in range(n):
        last = poller.last_poll
        deadline = time.monotonic() + timeout
        while poller.last_poll == last:
            assert time.monotonic() < deadline, "no round ended"
            time.sleep(0.01)


def log_lines(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_a_paused_poller_sends_no_probe_and_resumes(fakes, tmp_path):
    fake = fakes("good")
    poller = poller_for(tmp_path, [fake.node(tmp_path / "good")], interval=0.01)
    poller.start()
    try:
        rounds(poller, 2)
        with poller.paused():
            before = fake.predictions
            time.sleep(0.5)  # fifty periods
            assert fake.predictions == before
        rounds(poller, 2)
        assert fake.predictions > before
    finally:
        poller.stop()


@pytest.mark.parametrize("answer", [name for name in ANSWERS if name not in ("good", "busy")])
def test_a_node_that_answers_badly_is_not_ready_and_the_poller_goes_on(answer, fakes, tmp_path, capsys):
    good, bad = fakes("good"), fakes(answer)
    poller = poller_for(tmp_path, [good.node(tmp_path / "good"), bad.node(tmp_path / "bad")])
    poller.start()
    try:
        rounds(poller, 3)
        assert poller.progressing()
        assert poller.state == [True, False]
        assert poller.ready_link.is_symlink()
    finally:
        poller.stop()
    # one line while the node keeps failing the same way: its index and the exception's type
    failures = [(e["node"], e["error"]) for e in log_lines(capsys.readouterr().err)]
    assert failures == ([(2, RAISES[answer])] if RAISES[answer] else []), failures


@pytest.mark.parametrize("key_file", ODD_KEY_FILES)
def test_an_odd_key_file_makes_its_node_not_ready_and_the_poller_goes_on(key_file, fakes, tmp_path, capsys):
    fake = fakes("good")  # it would answer 200 to the right key
    poller = poller_for(tmp_path, [fake.node(tmp_path / "good"), fake.node(tmp_path / "odd", ODD_KEY_FILES[key_file])])
    poller.start()
    try:
        rounds(poller, 3)
        assert poller.progressing()
        assert poller.state == [True, False]
    finally:
        poller.stop()
    err = capsys.readouterr().err
    assert GOOD_KEY not in err
    # unreadable (not UTF-8, a directory) is an ordinary not-ready; an odd shape is logged
    expected = {"a_list": "AttributeError", "null": "AttributeError"}.get(key_file, "TypeError")
    logged = [(e["node"], e["error"]) for e in log_lines(err)]
    assert logged == ([] if key_file in ("not_utf8", "a_directory") else [(2, expected)]), logged


def test_a_node_is_ready_again_once_it_answers_well(fakes, tmp_path, capsys):
    fake = fakes("truncated")
    poller = poller_for(tmp_path, [fake.node(tmp_path / "node")])
    poller.start()
    try:
        rounds(poller, 2)
        assert poller.state == [False] and not poller.ready_link.is_symlink()
        fake.behaviour = "good"
        rounds(poller, 2)
        assert poller.state == [True] and poller.ready_link.is_symlink()
        fake.behaviour = "garbage_status_line"
        rounds(poller, 2)
        assert poller.state == [False] and not poller.ready_link.is_symlink()
    finally:
        poller.stop()
    failures = [(e["node"], e["error"]) for e in log_lines(capsys.readouterr().err)]
    assert failures == [(1, "IncompleteRead"), (1, "BadStatusLine")]


def test_progressing_says_when_rounds_stop_ending(fakes, tmp_path, capsys):
    """The runner's watchdog (gateway/__main__.py) reads progressing(): false when no round
    ends within stall_after (here the ready link cannot be written), true again once rounds
    end, false when the thread is gone."""
    fake = fakes("good")
    poller = poller_for(tmp_path, [fake.node(tmp_path / "node")])
    default_stall = poller.stall_after
    assert default_stall >= poller.interval + 4 * poller.timeout  # a frozen node's round fits
    poller.stall_after = 0.5
    poller.start()
    try:
        rounds(poller, 1)
        assert poller.progressing()
        shutil.rmtree(poller.ready_link.parent)  # the link's directory is gone: no round ends
        stalled_since = time.monotonic()
        while poller.progressing():
            assert time.monotonic() - stalled_since < 10, "still progressing"
            time.sleep(0.05)
        assert poller._thread.is_alive()
        poller.ready_link.parent.mkdir()
        rounds(poller, 1)
        assert poller.progressing() and poller.ready_link.is_symlink()
    finally:
        poller.stop()
    assert not poller.progressing()
    assert [e["error"] for e in log_lines(capsys.readouterr().err)] == ["FileNotFoundError"]


def test_a_fresh_lock_keeps_a_nodes_state_and_a_stale_one_is_ignored(tmp_path):
    with socket.socket() as s:  # a port nothing listens on: the node is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = Node(tmp_path / "node", port)
    node.directory.mkdir()
    (node.directory / KEY_FILE).write_text(json.dumps({"inference": {"key": GOOD_KEY}}))
    poller = poller_for(tmp_path, [node])
    poller.state = [True]
    lock, _ = take_lock(node.directory)
    assert poller.poll_once() and poller.state == [True]  # mid-rotation: as it was
    write_lock(lock, time.time() - LOCK_MAX_AGE_S - 1)
    assert not poller.poll_once() and poller.state == [False]  # left behind: polled as usual


# The rotation lock


def write_lock(lock: Path, taken: float) -> None:
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "taken_ms": int(taken * 1000)}))


def test_the_lock_records_its_owner_and_is_put_in_place_whole(tmp_path):
    lock, content = take_lock(tmp_path)
    assert lock == tmp_path / ROTATION_LOCK
    owner = json.loads(lock.read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert abs(owner["taken_ms"] / 1000 - time.time()) < 60
    assert lock.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [ROTATION_LOCK]  # no temp file left
    assert lock_is_fresh(lock)
    with pytest.raises(RuntimeError, match=f"pid {os.getpid()}"):
        take_lock(tmp_path)  # another rotation's, still fresh
    release_lock(lock, content)
    assert not lock.exists() and lock_age(lock) is None


def test_a_stale_lock_is_taken_over_and_its_old_owner_leaves_the_new_one(tmp_path):
    lock, old = take_lock(tmp_path)
    write_lock(lock, time.time() - 2 * LOCK_MAX_AGE_S)
    assert not lock_is_fresh(lock)
    stale = lock.read_bytes()
    lock, new = take_lock(tmp_path)
    assert lock.read_bytes() == new != stale
    release_lock(lock, stale)  # the killed rotation's: not its lock any more
    assert lock.read_bytes() == new
    release_lock(lock, new)
    assert not lock.exists()


def test_the_staleness_rule(tmp_path):
    lock = tmp_path / ROTATION_LOCK
    now = time.time()
    assert LOCK_MAX_AGE_S > GUARD_BEFORE_S + ROTATION_TIMEOUT_S
    for age, fresh in ((0, True), (LOCK_MAX_AGE_S - 0.5, True), (LOCK_MAX_AGE_S + 0.5, False), (3600, False)):
        write_lock(lock, now - age)
        assert lock_is_fresh(lock, now) is fresh, age
    write_lock(lock, now + 2 * LOCK_MAX_AGE_S)  # a clock set back keeps no lock forever
    assert not lock_is_fresh(lock, now)
    # a lock with no readable time (one an earlier version left: empty) counts from its mtime
    for text in ("", "[1]", '{"taken_ms": "soon"}', '{"taken_ms": NaN}'):
        lock.write_text(text)
        os.utime(lock, (now - 1, now - 1))
        assert lock_is_fresh(lock, now), text
        os.utime(lock, (now - 2 * LOCK_MAX_AGE_S,) * 2)
        assert not lock_is_fresh(lock, now), text


def test_the_gateway_config_carries_the_locks_cap(tmp_path):
    """gateway.js's hold reads its cap from the config: the value common/keys.py defines."""
    settings = GatewaySettings(8000, {"alice": "alice-key-0123456789"})
    config = render(settings, [Node(tmp_path, 8080)], tmp_path)
    assert f'map "" $rotation_lock_max_age_ms {{ default "{round(LOCK_MAX_AGE_S * 1000)}"; }}' in config


def test_a_rotation_that_gets_no_answer_gives_up_within_its_timeout_and_leaves_no_lock(tmp_path):
    """The cap counts on the token call's timeout: a management API that accepts and never
    answers costs ROTATION_TIMEOUT_S, then the lock is gone."""
    key_file = tmp_path / KEY_FILE
    key_file.write_text(json.dumps({"API": {"key": "api-key"}, "inference": {"key": "k"}}))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts (in the kernel), never answers
        started = time.monotonic()
        with pytest.raises(OSError):
            rotate(f"http://127.0.0.1:{silent.getsockname()[1]}", key_file, "inference")
        took = time.monotonic() - started
    assert took < LOCK_MAX_AGE_S
    assert not (tmp_path / ROTATION_LOCK).exists()


def test_the_supervisor_clears_a_lock_left_in_its_workdir(tmp_path, capsys):
    from server.container import clear_rotation_lock

    clear_rotation_lock(tmp_path)  # none: nothing to do, nothing said
    assert capsys.readouterr().err == ""
    take_lock(tmp_path)  # as a rotation killed mid-way leaves it: fresh
    clear_rotation_lock(tmp_path)
    assert not (tmp_path / ROTATION_LOCK).exists()
    [entry] = log_lines(capsys.readouterr().err)
    assert entry["source"] == "supervisor" and "rotation lock" in entry["message"]
    assert entry["pid"] == os.getpid() and entry["host"] == socket.gethostname()


def test_busy_counts_as_ready_only_for_a_node_that_was_ready(tmp_path, fakes):
    """A node starting (its workers in initialize(), the probe queued, /ping already 200)
    is busy-looking but not ready; once it has answered, busy keeps it ready."""
    fake = fakes("busy")
    poller = poller_for(tmp_path, [fake.node(tmp_path / "node")])
    assert poller.poll_once() is False
    fake.behaviour = "good"
    assert poller.poll_once() is True
    fake.behaviour = "busy"
    assert poller.poll_once() is True
