"""The chaos testbed runs deployment.yaml's pod (testbed/pod.py): its containers'
arguments, ports, volumes and probes come from the manifest, and what the testbed sets
differently it sets by flags the manifest has."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from common.contract import GATEWAY_PORT
from testbed import netns
from testbed.pod import DEPLOYMENT, pod


def test_the_pod_is_read_from_the_manifest():
    manifest = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    spec = pod()
    assert set(spec.containers) == {c["name"] for c in manifest["containers"]} == {"torchserve", "gateway"}
    gateway = spec.containers["gateway"]
    assert gateway.ports == {"http": GATEWAY_PORT, "metrics": 9082}
    assert gateway.args[gateway.args.index("--port") + 1] == str(GATEWAY_PORT)
    assert gateway.readiness is not None and gateway.liveness is not None
    torchserve = next(c for c in manifest["containers"] if c["name"] == "torchserve")
    liveness = spec.containers["torchserve"].liveness
    assert liveness is not None
    assert (liveness.period_s, liveness.failures) == (
        torchserve["livenessProbe"]["periodSeconds"],
        torchserve["livenessProbe"]["failureThreshold"],
    )
    assert spec.uid == manifest["securityContext"]["runAsUser"]
    assert spec.containers["gateway"].read_only == {"clients"}
    assert spec.containers["torchserve"].read_only == {"settings"}


def test_a_testbed_changes_flags_and_never_adds_one():
    gateway = pod().containers["gateway"]
    args = gateway.args_with(rate="7", drain_delay="1")
    assert args[args.index("--rate") + 1] == "7" and args[args.index("--drain-delay") + 1] == "1"
    assert len(args) == len(gateway.args)
    with pytest.raises(KeyError, match="--no-such-flag"):
        gateway.args_with(no_such_flag="x")


def test_as_processes_every_path_of_the_pod_is_the_replicas(tmp_path):
    root = tmp_path / "replica1"
    replica = netns.Replica(1, "ab12", 7, root, 384, tmp_path / "clients-secret" / "clients")
    for name, spec in netns.POD.containers.items():
        argv = replica._as_process(spec, list(spec.args))
        assert argv[0] != "python"
        paths = [Path(a) for a in argv[1:] if a.startswith("/")]
        assert paths, name
        for path in paths:  # under the replica's directories or the repository, never the pod's
            assert any(path.is_relative_to(d) for d in (tmp_path, netns.ROOT)), (name, path)
