"""The histogram of client-seen latency, by route and status, that the gateway exports for
Prometheus (GET /metrics/gateway on the metrics listener).

nginx's API server sends one syslog datagram per request, besides its JSON access log
line, to a unix datagram socket in the workdir (the template's `access_log syslog:`): the
status, $request_time (from the request's first byte read to the answer's last byte
sent, in seconds to the millisecond) and the route's name, never a path, a key or a body.
A thread of the gateway's process (LatencyCollector) reads them, counts each into the
histogram and rewrites the exposition file (in the Prometheus text format) that nginx
serves, at most once every `interval` seconds.

nginx sends without blocking: when the socket's queue is full (a burst faster than the
thread reads, net.unix.max_dgram_qlen datagrams) or the socket is gone, the datagram is
dropped. A lost datagram is a request not counted, nothing else: every datagram is a whole
line, counted whole or not at all, so under extreme load the counts only fall short.

Labels are bounded: `route` is one of gateway/routes.py's names, "none" for a request
that matched no route (refused before one was known), "other" for anything else; `code`
is the status when it is one of CODES, else "other".

SLO_THRESHOLD_S is the latency SLO's threshold (monitoring/prometheusrule.yaml selects
its bucket, le="0.25"; tests/unit/test_gateway_latency.py checks the rules against it)."""

from __future__ import annotations

import bisect
import os
import re
import socket
import threading
import time
from pathlib import Path

from common import events
from gateway.routes import ROUTES

METRIC = "sentiment_gateway_request_duration_seconds"
INVALID_METRIC = "sentiment_gateway_latency_lines_invalid_total"
SLO_THRESHOLD_S = 0.25
# Around the service's answers: a p50 of milliseconds, the SLO's threshold, the timeouts
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, SLO_THRESHOLD_S, 0.5, 1.0, 2.5, 5.0, 10.0)
# the routes whose requests the latency SLO counts (monitoring/prometheusrule.yaml)
PREDICTION_ROUTES = ("predictions", "v1_predict", "v2_infer")
ROUTE_NAMES = frozenset(route.name for route in ROUTES) | {"none"}
# what the API server answers: its own refusals (gateway/refusals.py, gateway/nginx.py's
# ERROR_PAGES), what a node answers passed on, 499 (the client closed first)
CODES = frozenset({200, 400, 401, 403, 404, 405, 408, 413, 414, 415, 429, 431, 499, 500, 501, 502, 503, 504, 505, 507})
# the message of one datagram (the template's log_format latency), after syslog's header
LINE = re.compile(r"(\d{3}) (\d{1,9}\.\d{3}) route=([a-z0-9_]*)")
SOCKET = "latency.sock"  # in the workdir
EXPOSITION = "gateway-metrics.txt"  # in the workdir's static dir: what nginx serves


def le(bound: float) -> str:
    """A bucket's le label as Prometheus' clients write it (0.25, 1.0, +Inf)."""
    return repr(float(bound))


def parse(datagram: bytes) -> tuple[str, str, float] | None:
    """(route, code, seconds) of one datagram, syslog's "<PRI>timestamp tag: " header
    and all, or None for one that is not a whole line of the format."""
    text = datagram.decode("ascii", "replace")
    header, sep, message = text.partition(": ")
    if not sep or not header.startswith("<"):
        return None
    match = LINE.fullmatch(message.rstrip("\n"))
    if match is None:
        return None
    status, seconds, route = int(match[1]), float(match[2]), match[3] or "none"
    return (
        route if route in ROUTE_NAMES else "other",
        str(status) if status in CODES else "other",
        seconds,
    )


class Histogram:
    """Cumulative buckets, sum and count per (route, code). Not thread-safe: one writer."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS):
        self.buckets = buckets
        # (route, code) -> [count in each bucket (not cumulative), then +Inf's], sum
        self.series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        self.invalid = 0
        for route in PREDICTION_ROUTES:  # the SLO's series exist from the start
            self._series(route, "200")

    def _series(self, route: str, code: str) -> tuple[list[int], list[float]]:
        return self.series.setdefault((route, code), ([0] * (len(self.buckets) + 1), [0.0]))

    def observe(self, route: str, code: str, seconds: float) -> None:
        counts, total = self._series(route, code)
        index = bisect.bisect_left(self.buckets, seconds)  # the first bound >= seconds; past all: +Inf
        counts[index] += 1
        total[0] += seconds

    def exposition(self) -> str:
        lines = [
            f"# HELP {METRIC} Client-seen latency of the gateway's requests ($request_time), by route and status.",
            f"# TYPE {METRIC} histogram",
        ]
        for (route, code), (counts, total) in sorted(self.series.items()):
            labels = f'route="{route}",code="{code}"'
            cumulative = 0
            for bound, count in zip((*map(le, self.buckets), "+Inf"), counts, strict=True):
                cumulative += count
                lines.append(f'{METRIC}_bucket{{{labels},le="{bound}"}} {cumulative}')
            lines.append(f"{METRIC}_sum{{{labels}}} {round(total[0], 6)!r}")
            lines.append(f"{METRIC}_count{{{labels}}} {cumulative}")
        lines += [
            f"# HELP {INVALID_METRIC} Datagrams on the latency socket that were not a whole line of its format.",
            f"# TYPE {INVALID_METRIC} counter",
            f"{INVALID_METRIC} {self.invalid}",
        ]
        return "\n".join(lines) + "\n"


class LatencyCollector:
    """The socket (bound when made, before nginx starts), the thread reading it and the
    exposition file it keeps, rewritten whole (os.replace) at most every `interval` s."""

    def __init__(self, workdir: Path, exposition: Path, interval: float = 1.0):
        self.path = Path(workdir) / SOCKET
        self.exposition, self.interval = Path(exposition), interval
        self.histogram = Histogram()
        self.path.unlink(missing_ok=True)  # a gateway killed outright leaves it behind
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(interval / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-collector", daemon=True)
        self.write()

    def write(self) -> None:
        tmp = self.exposition.with_name(self.exposition.name + ".tmp")
        tmp.write_text(self.histogram.exposition())
        os.replace(tmp, self.exposition)

    def _run(self) -> None:
        written, dirty, failing = time.monotonic(), False, False
        while not self._stop.is_set():
            try:
                datagram = self.sock.recv(4096)
            except TimeoutError:
                datagram = None
            except OSError:  # closed by stop()
                break
            if datagram is not None:
                line = parse(datagram)
                if line is None:
                    self.histogram.invalid += 1
                else:
                    self.histogram.observe(*line)
                dirty = True
            if dirty and time.monotonic() - written >= self.interval:
                try:
                    self.write()
                    dirty, failing = False, False
                except OSError as e:  # a full disk: tried again after the next interval
                    if not failing:
                        events.log("gateway", "latency metrics not written", error=type(e).__name__)
                    failing = True
                written = time.monotonic()

    def start(self) -> LatencyCollector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        self.path.unlink(missing_ok=True)
