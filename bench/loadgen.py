"""A closed-loop HTTP load generator light enough to share 2 cores with the server.

N clients each keep one keep-alive connection and send their next request as soon as
the previous answer arrived (closed loop). Requests are hand-written HTTP/1.1 on asyncio
streams, so a request costs the generator tens of microseconds rather than the
milliseconds a full client library would take from the cores the server needs.

Only requests that start after the warm-up and end before the deadline are counted.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    requests: int  # answered in the window
    ok: int  # 2xx
    errors: int  # everything else, connection failures included
    throughput_rps: float  # 2xx per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    status_counts: dict

    def as_dict(self) -> dict:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


class _Connection:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(raw)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def build_requests(url: str, bodies: list[bytes], headers: dict[str, str]) -> list[bytes]:
    """Raw HTTP/1.1 POST requests, one per body."""
    parts = urlsplit(url)
    head = f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]


class _HttpClient:
    """One closed-loop client: a keep-alive connection sending the prepared requests."""

    def __init__(self, url: str, requests: itertools.cycle):
        parts = urlsplit(url)
        self.conn = _Connection(parts.hostname or "127.0.0.1", parts.port or 80)
        self.requests = requests

    async def send(self) -> str:
        try:
            return str(await self.conn.request(next(self.requests)))
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
            self.conn.close()
            return "0"  # connection failure

    async def close(self) -> None:
        self.conn.close()


async def closed_loop(make_client, concurrency: int, duration: float, warmup: float):
    """Run `concurrency` clients from make_client(), each sending its next request when the
    previous one was answered; (latencies of the requests in the window, status counts)."""
    start = time.perf_counter()
    window_start, deadline = start + warmup, start + warmup + duration
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def loop():
        client = make_client()
        while True:
            sent = time.perf_counter()
            if sent >= deadline:
                break
            status = await client.send()
            done = time.perf_counter()
            if sent >= window_start and done <= deadline:
                latencies.append(done - sent)
                statuses[status] = statuses.get(status, 0) + 1
        await client.close()

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return latencies, statuses


def summarize(
    latencies: list[float],
    statuses: dict[str, int],
    concurrency: int,
    duration: float,
    ok_statuses=lambda s: s.startswith("2"),
) -> LoadResult:
    ok = sum(n for s, n in statuses.items() if ok_statuses(s))
    total = sum(statuses.values())
    ordered = sorted(latencies)
    return LoadResult(
        concurrency=concurrency,
        seconds=duration,
        requests=total,
        ok=ok,
        errors=total - ok,
        throughput_rps=ok / duration,
        p50_ms=percentile(ordered, 50) * 1000,
        p90_ms=percentile(ordered, 90) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        status_counts=statuses,
    )


def run_load(
    url: str,
    bodies: list[bytes],
    headers: dict[str, str],
    concurrency: int,
    duration: float = 15.0,
    warmup: float = 3.0,
) -> LoadResult:
    requests = itertools.cycle(build_requests(url, bodies, headers))
    latencies, statuses = asyncio.run(closed_loop(lambda: _HttpClient(url, requests), concurrency, duration, warmup))
    return summarize(latencies, statuses, concurrency, duration)


def json_bodies(texts: list[str]) -> list[bytes]:
    return [json.dumps({"text": t}).encode() for t in texts]


if __name__ == "__main__":  # a quick manual check: python -m bench.loadgen URL KEY [C]
    import sys

    url, key = sys.argv[1], sys.argv[2]
    c = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    result = run_load(
        url,
        json_bodies(["I love it", "This is bad"]),
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        c,
        5,
        1,
    )
    print(json.dumps(result.as_dict(), indent=2))
