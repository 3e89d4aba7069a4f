"""The pod the testbeds run, read from the Deployment they stand in for
(deploy/kubernetes/base/deployment.yaml): each container's arguments, ports, volume
mounts and probes, and the pod's user. A change to the manifest is a change to what the
chaos testbed runs; what a testbed sets differently (its own addresses, rates, grace) it
sets by flag, and only flags the manifest has.

Standard library and PyYAML only."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from common.paths import ROOT

DEPLOYMENT = ROOT / "deploy" / "kubernetes" / "base" / "deployment.yaml"


@dataclass(frozen=True)
class Probe:
    period_s: float
    timeout_s: float
    failures: int

    @classmethod
    def from_manifest(cls, probe: dict[str, Any] | None) -> Probe | None:
        if probe is None:
            return None
        # Kubernetes' defaults where the manifest says nothing
        return cls(
            float(probe.get("periodSeconds", 10)),
            float(probe.get("timeoutSeconds", 1)),
            probe.get("failureThreshold", 3),
        )


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    args: tuple[str, ...]
    ports: dict[str, int]  # by the port's name
    mounts: dict[str, str]  # volume name -> mount path
    read_only: frozenset[str]  # the volumes mounted read-only
    startup: Probe | None
    liveness: Probe | None
    readiness: Probe | None

    def args_with(self, **flags: str) -> list[str]:
        """The arguments with these flags' values instead (`drain_delay=` for --drain-delay);
        a flag the manifest does not give is an error: a testbed changes, it never adds."""
        args = list(self.args)
        for key, value in flags.items():
            flag = "--" + key.replace("_", "-")
            if flag not in args[:-1]:
                raise KeyError(f"{self.name}'s arguments in {DEPLOYMENT.name} have no {flag}")
            args[args.index(flag) + 1] = value
        return args


@dataclass(frozen=True)
class Pod:
    uid: int  # the pod's runAsUser
    grace_s: int  # terminationGracePeriodSeconds
    containers: dict[str, ContainerSpec]


@cache
def pod() -> Pod:
    deployment = yaml.safe_load(DEPLOYMENT.read_text())
    spec = deployment["spec"]["template"]["spec"]
    containers = {}
    for c in spec["containers"]:
        containers[c["name"]] = ContainerSpec(
            name=c["name"],
            args=tuple(str(a) for a in c["args"]),
            ports={p["name"]: int(p["containerPort"]) for p in c.get("ports", [])},
            mounts={m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])},
            read_only=frozenset(m["name"] for m in c.get("volumeMounts", []) if m.get("readOnly")),
            startup=Probe.from_manifest(c.get("startupProbe")),
            liveness=Probe.from_manifest(c.get("livenessProbe")),
            readiness=Probe.from_manifest(c.get("readinessProbe")),
        )
    return Pod(int(spec["securityContext"]["runAsUser"]), int(spec["terminationGracePeriodSeconds"]), containers)
