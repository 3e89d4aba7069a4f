"""A cold worker's first explanation beside a stream of predictions (issue 28).

A worker used to load its explainer (transformers, Captum, the fp32 copy: seconds) inside
the batch of its first explanation, so the predictions TorchServe had batched with it
waited for the load. The handler now loads it in initialize(), which TorchServe completes
before it marks the worker ready and sends it a request. On a fresh TorchServe with the
real default archive (the shipped two workers), an explanation and a steady stream of
predictions are sent through the gateway the moment it is ready; what is asserted is the
mechanism, read from the workers' own log lines: every worker loaded its explainer once,
inside initialize() (before initialize's closing line), and no worker loaded anything
while answering. How long predictions wait beside a cold worker's first explanation is a
benchmark figure, not asserted here (bench/explanation_cost.py)."""

from __future__ import annotations

import re

import pytest
import requests

from helpers import SteadyLoad, gateway_in_front, settled
from testbed.local_server import LocalTorchServe

# a node whose workers load the explainer, then explanations beside a stream of predictions
pytestmark = pytest.mark.timeout(600)

CLIENTS = {"cold": "cold-worker-client-key-1618"}
# a line the worker writes to stdout, as TorchServe's frontend logs it in model_log.log
WORKER_LINE = re.compile(r" (W-\d+-[\w.-]+)-stdout MODEL_LOG - (.*)$")
EXPLAINER_LOADED = "explainer loaded ("
INITIALIZED = "loaded sentiment ("  # initialize()'s closing line


@pytest.fixture
def fresh(default_store, tmp_path):
    """A TorchServe of this test's own, never asked anything before: the default model as
    shipped (model_store/sentiment.mar, the repo's config.properties, two workers)."""
    ts = LocalTorchServe(model_store=default_store, workdir=tmp_path / "ts")
    ts.start()
    yield ts
    ts.stop()


def worker_lines(server) -> dict[str, list[str]]:
    """{worker: the lines its handler wrote, in order} from the server's model log."""
    text = settled(lambda: (server.log_dir / "model_log.log").read_text(errors="replace"))
    lines: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = WORKER_LINE.search(line)
        if match:
            lines.setdefault(match.group(1), []).append(match.group(2))
    return lines


def test_a_cold_workers_first_explanation_loads_nothing_inside_a_batch(fresh, tmp_path):
    workers = fresh.client.worker_pids("sentiment", ready_only=True)
    with gateway_in_front(fresh, tmp_path / "gateway", CLIENTS) as gateway:
        with SteadyLoad(gateway, [lambda: CLIENTS["cold"]], clients_per_key=4) as load:
            explanation = requests.post(
                gateway.url("/explanations/sentiment"),
                json={"text": "the food was great but the service was awful"},
                headers={"Authorization": f"Bearer {CLIENTS['cold']}"},
                timeout=120,
            )
    assert explanation.status_code == 200, explanation.text[:300]
    assert explanation.json()["explanation"]["words"]
    assert load.failed == [] and load.ok > 0, load.failed[:5]
    assert sorted(fresh.client.worker_pids("sentiment", ready_only=True)) == sorted(workers)  # none restarted

    lines = worker_lines(fresh)
    initialized = {w: ls for w, ls in lines.items() if any(line.startswith(INITIALIZED) for line in ls)}
    # every worker that started is one of the ready ones; none restarted
    assert len(initialized) == len(workers) == 2, sorted(lines)
    for worker, own in initialized.items():
        loads = [i for i, line in enumerate(own) if line.startswith(EXPLAINER_LOADED)]
        closing = [i for i, line in enumerate(own) if line.startswith(INITIALIZED)]
        # once, in initialize(): before its closing line, which says explanations are on
        assert len(loads) == 1 and len(closing) == 1, (worker, own)
        assert loads[0] < closing[0], (worker, own)
        assert own[closing[0]].endswith("explanations on"), own[closing[0]]
        assert own[loads[0]].endswith("before the worker is ready"), own[loads[0]]
