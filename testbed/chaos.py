"""Faults under load on a testbed.netns.Testbed, one at a time, each measured.

    with Testbed(workdir) as bed, Load(bed) as load:
        result = run_fault(bed, load, FAULTS["freeze"], bed.replicas[1], hold_s=30)

Load: keep-alive clients through the front, each sending one prediction after another at
its pace; every request is kept as (start, end, outcome). A request fails when it is not
a 200 positive prediction, and its outcome says where it ended:

- `not-sent`: the front's own 503: no replica ready, or the connection to the one chosen
  failed (refused, or no answer within `timeout connect`): it never reached a replica.
- `lost`: the front's 502: the replica took the request and closed the connection without
  an answer (its process was killed).
- `front-timeout`: the front's 504: no answer within `timeout server`.
- `replica-<status> <type>`: an answer from the replica's gateway or TorchServe (JSON,
  with the error's `type` when it has one), such as a worker's death (500/507), the
  gateway's `502 NodeUnavailable` or the queue budget's `503 Overloaded`.
- `client-<Exception>`: the client's own error (its 120 s timeout, a reset).

What a fault's measurement says (times from the fault, in seconds):
- `failed`, by outcome; `in_flight`: requests the front had open at that replica just
  before the fault (HAProxy's scur): what a killed process can lose at most, besides
  those sent to it before the front takes it out.
- `slow`: requests that succeeded after more than SLOW_S (held by a frozen or cut-off replica).
- `taken_out_s`: the front marks the replica DOWN (None: it stayed in rotation).
- `full_service_s`: the start of the last failed or slow request: every request sent
  after it was answered, in under SLOW_S (0: none failed or was slow).
- `back_s`: the replica back in rotation (UP again after being DOWN; when it never went
  DOWN, its first good direct answer after the fault ended); `back_after_restore_s` from
  the end of a timed fault (the SIGCONT, the link restored).
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from common.torchserve_files import KEY_FILE
from testbed.netns import Replica, Testbed

SLOW_S = 5.0  # a request that succeeds after longer than this counts as slowed by the fault
CLIENT_TIMEOUT_S = 120.0  # above the front's `timeout server` (75 s): the front's timeouts show


@dataclass
class Request:
    start: float
    end: float
    outcome: str  # "ok" or where it failed

    @property
    def seconds(self) -> float:
        return self.end - self.start


# two replica answers the tests name: the queue budget's (a request that waited for a
# worker past queue_budget_ms) and the gateway's when no TorchServe node answered
OVER_BUDGET = "replica-503 Overloaded"
NODE_UNAVAILABLE = "replica-502 NodeUnavailable"


def outcome(status: int, body: bytes, content_type: str) -> str:
    if status == 200:
        return "ok" if b'"positive"' in body else "replica-200-wrong"
    if "json" in content_type:
        try:
            kind = json.loads(body).get("type")
        except (ValueError, AttributeError):
            kind = None
        return f"replica-{status} {kind}" if isinstance(kind, str) and kind.isidentifier() else f"replica-{status}"
    return {503: "not-sent", 502: "lost", 504: "front-timeout"}.get(status, f"front-{status}")


class Load:
    """`clients` keep-alive clients through the front, each at most `rate` requests/s."""

    def __init__(self, bed: Testbed, clients: int = 6, rate: float = 8.0):
        self.url = bed.front_url + "/predictions/sentiment"
        self.clients = clients
        self.headers = {"Authorization": f"Bearer {bed.client_key}"}
        self.period = 1.0 / rate
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.errors: Counter[str] = Counter()  # the clients' own errors, by message
        self._open: dict[int, float] = {}  # client -> the start of its open request
        self._threads = [threading.Thread(target=self._client, args=(i,), name=f"client{i}") for i in range(clients)]

    def _client(self, index: int) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                start = time.monotonic()
                self._open[index] = start
                try:
                    r = session.post(
                        self.url, json={"text": "I love this"}, headers=self.headers, timeout=CLIENT_TIMEOUT_S
                    )
                    result = outcome(r.status_code, r.content, r.headers.get("Content-Type", ""))
                except requests.RequestException as e:
                    result = f"client-{type(e).__name__}"
                    with self._lock:
                        self.errors[f"{type(e).__name__}: {str(e)[-160:]}"] += 1
                end = time.monotonic()
                with self._lock:
                    self.requests.append(Request(start, end, result))
                    self._open.pop(index, None)
                self._stop.wait(max(0.0, self.period - (end - start)))

    def most_sent(self, seconds: float) -> int:
        """The most requests the load can start in any `seconds`: each client one a period
        (a request never starts sooner than a period after its client's last one did)."""
        return self.clients * (math.floor(seconds / self.period) + 1)

    def between(self, since: float, until: float) -> list[Request]:
        """The requests that were open at some time in [since, until)."""
        with self._lock:
            return [r for r in self.requests if r.end >= since and r.start < until]

    def open_since(self, before: float) -> bool:
        """Whether a request started before `before` is still open."""
        with self._lock:
            return any(start < before for start in self._open.values())

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=CLIENT_TIMEOUT_S + 10)


@dataclass
class Fault:
    name: str
    what: str  # one line for the table
    inject: Callable[[Testbed, Replica], Any]
    restore: Callable[[Testbed, Replica, Any], None] | None = None  # after hold_s; None: the pod heals itself
    must_cost: str = ""  # which requests this fault must cost, and why


def kill_worker(bed: Testbed, r: Replica) -> list[int]:
    pids = r.worker_pids()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def kill_replica(bed: Testbed, r: Replica) -> None:
    r.paused = True  # the kubelet restarts it once every process is gone
    try:
        r.signal_all(signal.SIGKILL)
        for container in r.containers.values():
            container.kill()
    finally:
        r.paused = False


def freeze(bed: Testbed, r: Replica) -> list[int]:
    r.paused = True  # a frozen host: its kubelet too
    return r.signal_all(signal.SIGSTOP)


def thaw(bed: Testbed, r: Replica, _: Any) -> None:
    r.signal_all(signal.SIGCONT)
    r.paused = False


IPTABLES_RULES = (("INPUT", "-i"), ("OUTPUT", "-o"))


def drop_packets(bed: Testbed, r: Replica) -> None:
    for chain, direction in IPTABLES_RULES:
        r.exec("iptables", "-w", "-A", chain, direction, r.ns_if, "-j", "DROP")


def pass_packets(bed: Testbed, r: Replica, _: Any) -> None:
    for chain, direction in IPTABLES_RULES:
        r.exec("iptables", "-w", "-D", chain, direction, r.ns_if, "-j", "DROP")


def link_down(bed: Testbed, r: Replica) -> None:
    subprocess.run(["ip", "link", "set", r.host_if, "down"], check=True, timeout=10)


def link_up(bed: Testbed, r: Replica, _: Any) -> None:
    subprocess.run(["ip", "link", "set", r.host_if, "up"], check=True, timeout=10)


def fill_disk(bed: Testbed, r: Replica) -> int:
    """Fill the replica's tmpfs (its writable directories) to the last byte; the bytes written."""
    written = 0
    chunk = b"\0" * (1 << 20)
    try:
        fd = os.open(r.root / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        return 0  # full already
    try:
        while True:
            try:
                written += os.write(fd, chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                return written
    finally:
        os.close(fd)


def free_disk(bed: Testbed, r: Replica, _: Any) -> None:
    (r.root / "filler").unlink(missing_ok=True)


def remove_key_file(bed: Testbed, r: Replica) -> None:
    (r.ts_dir / KEY_FILE).unlink()


def starve_cpu(fraction: float) -> Callable[[Testbed, Replica], None]:
    def inject(bed: Testbed, r: Replica) -> None:
        r.containers["torchserve"].set_cpu_limit(fraction)

    return inject


def feed_cpu(bed: Testbed, r: Replica, _: Any) -> None:
    r.containers["torchserve"].set_cpu_limit(None)


FAULTS = {
    f.name: f
    for f in (
        Fault(
            "worker-kill",
            "SIGKILL of the replica's TorchServe worker",
            kill_worker,
            must_cost="the batch the worker held (TorchServe fails it with 'Worker died')",
        ),
        Fault(
            "replica-kill",
            "SIGKILL of every process of the replica, then restarted",
            kill_replica,
            must_cost="the requests in flight at the replica (the front's 502), and those the front sent it "
            "before its checks failed (503, never sent: connection refused; the restarted gateway's 502 "
            "before TorchServe listened; the queue budget's 503 for one that waited for its worker)",
        ),
        Fault("freeze", "SIGSTOP of every process of the replica, SIGCONT after the hold", freeze, thaw),
        Fault(
            "net-drop",
            "every packet to and from the replica dropped (iptables) for the hold",
            drop_packets,
            pass_packets,
        ),
        Fault("link-down", "the replica's link down for the hold", link_down, link_up),
        Fault("disk-full", "the replica's writable directories (tmpfs) filled for the hold", fill_disk, free_disk),
        Fault(
            "key-file-removed",
            "TorchServe's key_file.json removed (the liveness probe restarts TorchServe)",
            remove_key_file,
            must_cost="the requests sent to the replica until the front takes it out: the gateway has no key to "
            "send on",
        ),
        Fault(
            "cpu-starved", "the replica's TorchServe limited to 5% of a CPU for the hold", starve_cpu(0.05), feed_cpu
        ),
    )
}


def disk_used(r: Replica) -> int:
    st = os.statvfs(r.root)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def direct_ok(r: Replica, key: str, timeout: float = 5.0) -> bool:
    try:
        resp = requests.post(
            r.url + "/predictions/sentiment",
            json={"text": "I love this"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
        )
        return resp.status_code == 200
    except requests.RequestException:
        return False


@dataclass
class Result:
    fault: str
    what: str
    replica: str
    hold_s: float
    requests: int
    failed: int
    failed_by_outcome: dict[str, int]
    front_failed: dict[str, int]  # the front's log: "server status termination-state" of what failed there
    in_flight: int
    slow: int
    max_latency_s: float
    taken_out_s: float | None
    full_service_s: float
    back_s: float | None
    back_after_restore_s: float | None
    restarts: list[str] = field(default_factory=list)
    disk_used_mb: float = 0.0  # the replica's tmpfs after the fault (TorchServe unpacks its archive there)
    must_cost: str = ""
    detail: Any = None

    def count(self, *outcomes: str) -> int:
        """The failed requests whose outcome is one of these."""
        return sum(self.failed_by_outcome.get(o, 0) for o in outcomes)


def sent_before_out(load: Load, result: Result) -> int:
    """The most requests the load could send the faulty replica before the front took it
    out: every request started from the fault until then (and one second more, for the
    front's state as the testbed reads it, every 0.1 s), as if all went to that replica."""
    assert result.taken_out_s is not None, repr(result)
    return load.most_sent(result.taken_out_s + 1.0)


def run_fault(
    bed: Testbed, load: Load, fault: Fault, r: Replica, hold_s: float = 30.0, recover_timeout: float = 240.0
) -> Result:
    """Inject `fault` into replica `r` under `load`, restore it after `hold_s` (when it has a
    restore), wait until the replica is back and every request it held has ended, measure."""
    front = bed.front
    assert front is not None
    in_flight = front.in_flight(r.name)
    events_before = len(bed.kubelet_events)
    t0 = time.monotonic()
    detail = fault.inject(bed, r)
    if fault.restore is not None:
        time.sleep(max(0.0, hold_s - (time.monotonic() - t0)))
        t_restore = time.monotonic()
        fault.restore(bed, r, detail)
    else:
        t_restore = t0
    down = front.wait_state(r.name, "DOWN", timeout=0, since=t0)
    deadline = t_restore + recover_timeout
    back: float | None = None
    if down is not None or fault.restore is None:
        # out now, or about to be (the front needs two failed checks): wait for it to come back UP
        if down is None:
            down = front.wait_state(r.name, "DOWN", timeout=6, since=t0)
        if down is not None:
            back = front.wait_state(r.name, "UP", timeout=max(0.0, deadline - time.monotonic()), since=down)
    if back is None and down is None:
        while time.monotonic() < deadline:
            if direct_ok(r, bed.client_key):
                back = time.monotonic()
                break
            time.sleep(0.5)
    # every request the fault could have held has ended, and the load ran on a while after
    end = max(time.monotonic(), t0) + 5.0
    time.sleep(5.0)
    while time.monotonic() < end + CLIENT_TIMEOUT_S and load.open_since(end):
        time.sleep(0.5)
    window = load.between(t0, end)
    wall = time.time() - time.monotonic()
    first = min((q.start for q in window), default=t0)
    front_failed = Counter(
        f"{server} {status} {term}"
        for accepted, server, status, term in front.log_lines()
        if first + wall - 0.01 <= accepted <= end + wall and (status != 200 or term != "----")
    )
    bad = [q for q in window if q.outcome != "ok" or q.seconds > SLOW_S]
    failed = [q for q in window if q.outcome != "ok"]
    restarts = [f"{round(t - t0, 1)}s {what}" for t, name, what in bed.kubelet_events[events_before:] if name == r.name]
    return Result(
        fault=fault.name,
        what=fault.what,
        replica=r.name,
        hold_s=hold_s if fault.restore is not None else 0.0,
        requests=len(window),
        failed=len(failed),
        failed_by_outcome=dict(Counter(q.outcome for q in failed)),
        front_failed=dict(front_failed),
        in_flight=in_flight,
        slow=sum(1 for q in window if q.outcome == "ok" and q.seconds > SLOW_S),
        max_latency_s=round(max((q.seconds for q in window), default=0.0), 2),
        taken_out_s=None if down is None else round(down - t0, 1),
        full_service_s=round(max((max(0.0, q.start - t0) for q in bad), default=0.0), 1),
        back_s=None if back is None else round(back - t0, 1),
        back_after_restore_s=None if back is None or fault.restore is None else round(back - t_restore, 1),
        restarts=restarts,
        must_cost=fault.must_cost,
        disk_used_mb=round(disk_used(r) / 2**20, 1),
        detail=detail if isinstance(detail, (int, str)) else None,
    )
