"""The gateway in a process of its own for a benchmark, as `make serve` (server/serve.py)
and the pod (sentiment-gateway) run it.

Started in the benchmark's own process, the gateway's threads (the latency collector,
which reads one datagram per request, and the readiness poller) shared the load
generator's GIL, which could delay the answers the generator times. Here they cannot.
(It was not what made the client-timed refusals slow: their p99 at 3x stayed at tens of
milliseconds once the gateway ran apart, bench/results/README.md, Overload.)
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from gateway.nginx import Gateway, Node

START_TIMEOUT_S = 60.0


@contextmanager
def gateway_process(
    gateway: Gateway, nodes: list[Node], cpus: set[int] | None = None
) -> Iterator[multiprocessing.process.BaseProcess]:
    """`gateway` started (and at the end stopped) in a forked process, on `cpus` if given;
    that process is handed back (its nginx processes are its children). The caller's
    `gateway` is not started here, but its settings, URL and log file are the running one's."""
    context = multiprocessing.get_context("fork")
    done = context.Event()
    nginx_pids = context.SimpleQueue()  # the nginx processes' ids, for a cleanup here if need be

    def run() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        try:
            gateway.start(nodes)
        except BaseException:
            traceback.print_exc()
            raise
        nginx_pids.put([p.pid for p in gateway.processes()])
        done.wait()
        gateway.stop()

    process = context.Process(target=run, name="gateway")
    process.start()
    pids: list[int] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while nginx_pids.empty():
            if not process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway's process did not start it (exit code {process.exitcode})")
            time.sleep(0.2)
        pids = nginx_pids.get()
        yield process
    finally:
        done.set()
        process.join(timeout=gateway.settings.read_timeout_s + 30)
        if process.is_alive():
            process.kill()
            process.join()
            for pid in pids:  # each nginx leads a process group of its own (Gateway.start)
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
