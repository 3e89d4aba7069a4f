"""The chaos testbed with the pod's containers run from the image, as `make chaos` and
`make soak` run it: podman in each replica's network namespace, the deployment's
arguments, a read-only root, no capabilities, the image's user (test_chaos.py's short form
runs the same supervisors as processes, which needs no image). Two replicas serve through
the front; one killed whole, both its containers, costs at most what it held, is restarted
by the kubelet (podman run --replace over what the killed one left) and comes back; at
the end no container of the testbed is left.

Needs root (the `root` fixture: failed without it in CI, skipped elsewhere) and the
image (`make test` builds it).
"""

from __future__ import annotations

import os
import time

import pytest

from helpers import poll
from testbed.chaos import FAULTS, NODE_UNAVAILABLE, OVER_BUDGET, Load, run_fault, sent_before_out
from testbed.netns import Testbed
from testbed.podman import podman

# two replicas started from the image, a replica killed and restarted: minutes
pytestmark = [pytest.mark.container, pytest.mark.usefixtures("root"), pytest.mark.timeout(1200)]
IMAGE = os.environ.get("SENTIMENT_IMAGE", "localhost/sentiment-serve:dev")
CLIENTS = 2
RATE = 8.0


def test_replicas_from_the_image_serve_and_a_killed_one_comes_back(tmp_path):
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.fail(f"{IMAGE} is missing: `make test` builds it (make image)")
    with Testbed(tmp_path / "bed", replicas=2, image=IMAGE) as bed, Load(bed, CLIENTS, rate=RATE) as load:
        names = [c.name for r in bed.replicas for c in r.containers.values()]
        running = podman("ps", "--format", "{{.Names}}").stdout.split()
        assert set(names) <= set(running), running
        requests = poll(lambda: load.between(0, time.monotonic()), lambda q: len(q) > 10, timeout=30)
        assert len(requests) > 10 and [q.outcome for q in requests if q.outcome != "ok"] == []
        replica = bed.replicas[0]
        workers = replica.worker_pids()
        assert workers, "the image's TorchServe worker is not in the container's cgroups"
        result = run_fault(bed, load, FAULTS["replica-kill"], replica)
        assert result.taken_out_s is not None and result.back_s is not None, repr(result)
        assert sum("restarted gateway" in r for r in result.restarts) == 1, result.restarts
        assert sum("restarted torchserve" in r for r in result.restarts) == 1, result.restarts
        assert replica.worker_pids() and set(replica.worker_pids()).isdisjoint(workers)
        # never sent, lost in flight, the restarted gateway's 502 before TorchServe listens, or,
        # from the image, whose TorchServe listens sooner than its worker is up: the queue
        # budget's 503 Overloaded for what waited there past it (none of these ran the model)
        allowed = {"not-sent", "lost", "client-ConnectionError", NODE_UNAVAILABLE, OVER_BUDGET}
        assert set(result.failed_by_outcome) <= allowed, repr(result)
        # lost in flight: at most one per client (each has one request open); the rest
        # were sent to the replica before the front took it out
        assert result.count("lost", "client-ConnectionError") <= CLIENTS, repr(result)
        never_ran = result.count("not-sent", NODE_UNAVAILABLE, OVER_BUDGET)
        assert never_ran <= sent_before_out(load, result), repr(result)
    left = podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
    assert not set(names) & set(left), left
