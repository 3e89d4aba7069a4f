"""An open-loop HTTP load generator: arrivals at a fixed rate, whatever the answers.

Request i starts at t0 + i / rate on a new connection (as independent users arrive: no
client waits for another, and a slow answer does not slow the arrivals, unlike the
closed loop of bench/loadgen.py, which backs off as the server slows). Each request ends
with its status, or "timeout" after `timeout` seconds (its client gives up), or "0" for a
connection failure. Requests are hand-written HTTP/1.1 on asyncio streams, cheap enough
to share the machine's cores with the server; the generator records how late it started
requests behind the schedule, so a run it could not drive shows it.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from bench.loadgen import build_requests, percentile

LAG_BAR_MS = 10.0  # a generator later than this (p99) behind its schedule cannot tell


@dataclass
class Outcome:
    started: float  # seconds since the run's start
    latency_s: float
    status: str  # "200", "429", "503", ..., "timeout", "0" (connection failed)
    retry_after: bool  # the answer carried a Retry-After header
    key: int = 0  # which client key sent it (its index in the run's headers)


@dataclass
class OpenLoopResult:
    offered_rps: float
    seconds: float
    sent: int
    statuses: dict[str, int]
    answered_rps: float  # 2xx per second
    goodput_rps: float  # 2xx within the deadline, per second
    deadline_ms: float
    ok_p50_ms: float
    ok_p99_ms: float
    refused_p50_ms: float  # 429 and 503 answers
    refused_p99_ms: float
    refused_without_retry_after: int
    schedule_lag_p99_ms: float  # how late the generator started requests
    # the generator kept its schedule (lag p99 under LAG_BAR_MS): else its figures say what a
    # late generator saw, not what the server did, and the run cannot tell
    on_schedule: bool
    goodput_per_key_rps: list[float]  # each key's 2xx within the deadline, per second

    def as_dict(self) -> dict:
        return asdict(self)


async def _one(host: str, port: int, raw: bytes, timeout: float) -> tuple[str, bool]:
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split()[1]
        headers = {n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines[1:] if line)}
        length = int(headers.get("content-length", "0"))
        if length:
            await asyncio.wait_for(reader.readexactly(length), timeout)
        return status, "retry-after" in headers
    except TimeoutError:
        return "timeout", False
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
        return "0", False
    finally:
        if writer is not None:
            writer.close()


async def _run(host: str, port: int, raws: list[tuple[int, bytes]], phases: list[tuple[float, float]], timeout: float):
    """Each phase (rate, seconds) right after the previous one's last arrival, without
    waiting for its answers: outcomes and schedule lags per phase."""
    outcomes: list[list[Outcome]] = [[] for _ in phases]
    lags: list[list[float]] = [[] for _ in phases]
    cycle = itertools.cycle(raws)
    loop = asyncio.get_running_loop()
    tasks = []

    async def send(phase: int, key_raw: tuple[int, bytes], at: float, t0: float) -> None:
        started = loop.time()
        lags[phase].append(started - at)
        key, raw = key_raw
        status, retry_after = await _one(host, port, raw, timeout)
        outcomes[phase].append(Outcome(started - t0, loop.time() - started, status, retry_after, key))

    t0 = loop.time()
    for phase, (rate, seconds) in enumerate(phases):
        for i in range(int(rate * seconds)):
            at = t0 + i / rate
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(phase, next(cycle), at, t0)))
        t0 += seconds
    await asyncio.gather(*tasks)
    return outcomes, lags


def run_open_loop(
    url: str,
    bodies: list[bytes],
    headers: list[dict[str, str]],
    phases: list[tuple[float, float]],
    deadline_ms: float,
    timeout: float = 10.0,
) -> list[tuple[OpenLoopResult, list[Outcome]]]:
    """Phases of (requests a second, seconds), one after the other, each request on a new
    connection; per phase its summary (goodput: 2xx answers within `deadline_ms`) and
    outcomes (`started` counted from the phase's start)."""
    parts = urlsplit(url)
    # one client key after another (each its own set of headers), body after body
    per_key = [build_requests(url, bodies, {**h, "Connection": "close"}) for h in headers]
    raws = [(key, raw) for same_body in zip(*per_key, strict=True) for key, raw in enumerate(same_body)]
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    outcomes, lags = asyncio.run(_run(host, port, raws, phases, timeout))
    return [
        (summarize(o, lag, rate, seconds, deadline_ms, len(headers)), o)
        for o, lag, (rate, seconds) in zip(outcomes, lags, phases, strict=True)
    ]


def summarize(
    outcomes: list[Outcome], lags: list[float], rate: float, seconds: float, deadline_ms: float, keys: int = 1
):
    statuses: dict[str, int] = {}
    for o in outcomes:
        statuses[o.status] = statuses.get(o.status, 0) + 1
    ok = sorted(o.latency_s for o in outcomes if o.status.startswith("2"))
    refused = [o for o in outcomes if o.status in ("429", "503")]
    refused_latency = sorted(o.latency_s for o in refused)
    good_per_key = [0] * keys
    for o in outcomes:
        if o.status.startswith("2") and o.latency_s * 1000 <= deadline_ms:
            good_per_key[o.key] += 1
    good = sum(good_per_key)
    lag_p99_ms = round(percentile(sorted(lags), 99) * 1000, 1)
    return OpenLoopResult(
        offered_rps=rate,
        seconds=seconds,
        sent=len(outcomes),
        statuses=statuses,
        answered_rps=round(len(ok) / seconds, 1),
        goodput_rps=round(good / seconds, 1),
        deadline_ms=round(deadline_ms, 1),
        ok_p50_ms=round(percentile(ok, 50) * 1000, 1),
        ok_p99_ms=round(percentile(ok, 99) * 1000, 1),
        refused_p50_ms=round(percentile(refused_latency, 50) * 1000, 1),
        refused_p99_ms=round(percentile(refused_latency, 99) * 1000, 1),
        refused_without_retry_after=sum(1 for o in refused if not o.retry_after),
        schedule_lag_p99_ms=lag_p99_ms,
        on_schedule=lag_p99_ms < LAG_BAR_MS,
        goodput_per_key_rps=[round(g / seconds, 1) for g in good_per_key],
    )


def recovery(outcomes_after: list[Outcome], normal_p50_ms: float, window_s: float = 0.5) -> float | None:
    """Seconds from the end of an overload until the p50 of 2xx answers, over windows of
    `window_s`, is back within 1.5x the normal p50 (None if it never is)."""
    if not outcomes_after:
        return None
    end = max(o.started for o in outcomes_after)
    t = 0.0
    while t <= end:
        window = sorted(o.latency_s for o in outcomes_after if t <= o.started < t + window_s and o.status == "200")
        if window and percentile(window, 50) * 1000 <= 1.5 * normal_p50_ms:
            return round(t, 2)
        t += window_s
    return None


if __name__ == "__main__":  # a quick manual check: python -m bench.openloop URL KEY RATE [SECONDS]
    import json
    import sys

    from bench.loadgen import json_bodies

    ((result, _),) = run_open_loop(
        sys.argv[1],
        json_bodies(["I love it", "This is bad"]),
        [{"Authorization": f"Bearer {sys.argv[2]}", "Content-Type": "application/json"}],
        [(float(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 5.0)],
        300.0,
    )
    print(json.dumps(result.as_dict(), indent=2))
