"""The closed-loop load of bench/loadgen.py over TorchServe's gRPC inference API.

Each client is a grpc.aio call loop on one shared channel (HTTP/2 multiplexes them);
status is the gRPC code name ("OK" counts as success).
"""

from __future__ import annotations

import asyncio
import itertools

import grpc

from bench.loadgen import LoadResult, closed_loop, summarize
from clients.grpc_client import SentimentGrpcClient


class _GrpcClient:
    def __init__(self, stub, requests: itertools.cycle, metadata):
        self.stub, self.requests, self.metadata = stub, requests, metadata

    async def send(self) -> str:
        try:
            await self.stub.Predictions(next(self.requests), metadata=self.metadata, timeout=60)
            return "OK"
        except grpc.aio.AioRpcError as e:
            return e.code().name

    async def close(self) -> None:
        pass


def run_grpc_load(
    target: str,
    inference_key: str,
    payloads: list[object],
    concurrency: int,
    duration: float = 15.0,
    warmup: float = 3.0,
    version: str = "",
) -> LoadResult:
    # the sync client builds the request messages and the metadata; aio sends them
    sync = SentimentGrpcClient(target, inference_key)
    requests = itertools.cycle([sync.request(p, version=version) for p in payloads])
    metadata = sync.metadata
    sync.close()
    stub_class = type(sync.stub)

    async def main():
        async with grpc.aio.insecure_channel(target) as channel:
            stub = stub_class(channel)
            return await closed_loop(lambda: _GrpcClient(stub, requests, metadata), concurrency, duration, warmup)

    latencies, statuses = asyncio.run(main())
    return summarize(latencies, statuses, concurrency, duration, ok_statuses=lambda s: s == "OK")
