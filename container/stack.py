"""Replicas of the pod, a front balancer and Prometheus on this machine.

    .venv/bin/python container/stack.py up [--replicas 2] [--port 8000]        (make stack)
    .venv/bin/python container/stack.py stop-replica 1     (SIGTERM to one replica: it drains)
    .venv/bin/python container/stack.py start-replica 1    (and back, until it is ready)
    .venv/bin/python container/stack.py down                (make stack-down)

Each replica is the Kubernetes Deployment's pod, rendered from
deploy/kubernetes/overlays/local with `kubectl kustomize` and run by `podman kube play`
(podman runs one pod per Deployment, so each replica is played under its own name): the
TorchServe container and the gateway container, with the gateway's two ports published
on 127.0.0.1: its API (`http`) and its metrics listener (`metrics`: TorchServe's metrics,
GET /metrics only; TorchServe's own ports stay on the pod's loopback). In front of the
replicas, HAProxy on the host plays the part of the Kubernetes Service: it balances over
the replicas whose /readyz passes and, like a Service, never sends a request a second
time. Prometheus on the host scrapes every replica's metrics listener, as the
ServiceMonitor does. A fresh client key is written to
build/stack/<name>/clients (the local overlay's ConfigMap carries it: podman 4.3's kube
play fails on Secret volumes).

`up` prints the front URL and the key file as JSON; processes are stopped by their pids
and pods by their names, recorded in build/stack/<name>/state.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from common import events
from common.contract import GATEWAY_PORT
from common.paths import ROOT, tool
from testbed.front import FRONT_CONF
from testbed.podman import podman
from testbed.prometheus import LocalPrometheus

OVERLAY = ROOT / "deploy" / "kubernetes" / "overlays" / "local"
GRACE_S = 95  # podman stop -t: above the pod's terminationGracePeriodSeconds (90)


def log(message: str) -> None:
    events.log("stack", message)


def render_overlay(image: str | None) -> list[dict]:
    kubectl = tool("kubectl") or "kubectl"  # the venv's (requirements-dev.txt), else PATH's
    out = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, check=True)
    # what kube play runs: the pod and its ConfigMaps (the Service, HPA, PDB and
    # NetworkPolicy are the cluster's business)
    docs = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] in ("Deployment", "ConfigMap")]
    if image:
        for doc in docs:
            if doc["kind"] == "Deployment":
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    c["image"] = image
    return docs


def replica_docs(
    docs: list[dict], pod: str, gateway_port: int, metrics_port: int, clients: str, rate: int | None = None
) -> list[dict]:
    """The overlay's objects for one replica: its Deployment renamed, with host ports (each
    container port by its name: the gateway's `http` and `metrics`), and its volumes and
    ConfigMaps named after it: kube play turns each emptyDir into a podman volume of the
    volume's name and each ConfigMap into one of the ConfigMap's name, which replicas (and
    a later run) would otherwise share."""
    out = []
    docs = docs + [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "sentiment-clients"},
            "data": {"clients": clients},
        }
    ]
    for doc in docs:
        doc = copy.deepcopy(doc)
        if doc["kind"] == "ConfigMap":
            doc["metadata"]["name"] = f"{pod}-{doc['metadata']['name']}"
        if doc["kind"] == "Deployment":
            doc["metadata"]["name"] = pod
            doc["spec"]["replicas"] = 1
            spec = doc["spec"]["template"]["spec"]
            for volume in spec["volumes"]:
                volume["name"] = f"{pod}-{volume['name']}"
                if "configMap" in volume:
                    volume["configMap"]["name"] = f"{pod}-{volume['configMap']['name']}"
            for container in spec["containers"]:
                args = container.get("args", [])
                if rate is not None and "--rate" in args:  # one client key carrying a whole load test
                    args[args.index("--rate") + 1] = str(rate)
                    args[args.index("--burst") + 1] = str(2 * rate)
                for mount in container.get("volumeMounts", []):
                    mount["name"] = f"{pod}-{mount['name']}"
                for port in container.get("ports", []):
                    host_port = {"http": gateway_port, "metrics": metrics_port}[port["name"]]
                    port.update(hostPort=host_port, hostIP="127.0.0.1")
        out.append(doc)
    return out


def wait_ready(url: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(url, timeout=6) as r:
                if r.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


def start_front(workdir: Path, port: int, replica_ports: list[int]) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    servers = "\n".join(f"    server replica{i} 127.0.0.1:{p} check" for i, p in enumerate(replica_ports, 1))
    config = workdir / "haproxy.cfg"
    config.write_text(FRONT_CONF.format(workdir=workdir.resolve(), servers=servers, port=port))
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    subprocess.run([haproxy, "-c", "-q", "-f", str(config)], check=True, capture_output=True)
    log_file = open(workdir / "haproxy.log", "ab")
    subprocess.run([haproxy, "-D", "-f", str(config)], check=True, stdout=log_file, stderr=log_file)
    log_file.close()
    return int((workdir / "haproxy.pid").read_text())


def up(args) -> dict:
    state_dir = args.state_dir / args.name
    if (state_dir / "state.json").exists():
        raise SystemExit(f"a stack named {args.name} is up ({state_dir}/state.json): `down` it first")
    state_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    clients_file = state_dir / "clients"
    fd = os.open(clients_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"local={key}\n")
    docs = render_overlay(args.image)
    state = {
        "name": args.name,
        "front": f"http://127.0.0.1:{args.port}",
        "clients_file": str(clients_file),
        "replicas": {},
        "pids": {},
    }
    try:
        started = time.monotonic()
        for i in range(1, args.replicas + 1):
            pod = f"{args.name}-{i}"
            gateway_port, metrics_port = args.replica_port_base + i, args.metrics_port_base + i
            manifest = state_dir / f"replica-{i}.yaml"
            manifest.write_text(
                yaml.safe_dump_all(replica_docs(docs, pod, gateway_port, metrics_port, f"local={key}\n", args.rate))
            )
            played = podman("kube", "play", str(manifest)).stdout.split()
            pod_id = played[played.index("Pod:") + 1]
            pod_name = podman("pod", "inspect", "--format", "{{.Name}}", pod_id).stdout.strip()
            state["replicas"][str(i)] = {
                "pod": pod_name,
                "manifest": str(manifest),
                "gateway": f"http://127.0.0.1:{gateway_port}",
                "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
            }
            log(f"replica {i}: pod {pod_name}, gateway 127.0.0.1:{gateway_port}, metrics 127.0.0.1:{metrics_port}")
        for i, replica in state["replicas"].items():
            seconds = wait_ready(replica["gateway"] + "/readyz", args.timeout)
            replica["ready_after_s"] = round(time.monotonic() - started, 1)
            log(f"replica {i} ready ({seconds:.0f}s of waiting)")
        state["pids"]["front"] = start_front(
            state_dir / "front", args.port, [args.replica_port_base + i for i in range(1, args.replicas + 1)]
        )
        prometheus = LocalPrometheus(
            state_dir / "prometheus",
            {r["pod"]: args.metrics_port_base + int(i) for i, r in state["replicas"].items()},
            scrape_interval="5s",
            # the same listeners: the gateways' own metrics beside TorchServe's
            gateway_targets={r["pod"]: args.metrics_port_base + int(i) for i, r in state["replicas"].items()},
            port=args.prometheus_port,
        ).start()
        state["pids"]["prometheus"] = prometheus.proc.pid
        state["prometheus"] = prometheus.url
    finally:
        (state_dir / "state.json").write_text(json.dumps(state, indent=2))
    return state


def load_state(args) -> dict:
    path = args.state_dir / args.name / "state.json"
    if not path.exists():
        raise SystemExit(f"no stack named {args.name} is up")
    return json.loads(path.read_text())


def container_exit_codes(pod: str) -> dict[str, int]:
    listing = podman("ps", "-a", "--filter", f"pod={pod}", "--format", "json").stdout
    return {c["Names"][0]: c.get("ExitCode") for c in json.loads(listing or "[]") if not c.get("IsInfra")}


def stop_pod(pod: str) -> None:
    """As Kubernetes does: SIGTERM to the pod's containers together, the pod's network
    (its infra container) kept until they have exited. `podman pod stop` alone would stop
    the infra container at once and cut the connections of a draining gateway."""
    listing = json.loads(podman("ps", "--filter", f"pod={pod}", "--format", "json").stdout or "[]")
    containers = [c["Names"][0] for c in listing if not c.get("IsInfra")]
    if containers:
        podman("stop", "-t", str(GRACE_S), *containers, timeout=GRACE_S + 60)
    podman("pod", "stop", pod, timeout=60)


def stop_replica(args) -> dict:
    replica = load_state(args)["replicas"][str(args.replica)]
    started = time.monotonic()
    stop_pod(replica["pod"])
    return {
        "pod": replica["pod"],
        "stopped_in_s": round(time.monotonic() - started, 1),
        "exit_codes": container_exit_codes(replica["pod"]),
    }


def start_replica(args) -> dict:
    """A stopped replica started again, as a Deployment replaces a pod: until its /readyz passes."""
    state = load_state(args)
    replica = state["replicas"][str(args.replica)]
    started = time.monotonic()
    podman("pod", "start", replica["pod"], timeout=120)
    wait_ready(replica["gateway"] + "/readyz", args.timeout)
    return {"pod": replica["pod"], "ready_in_s": round(time.monotonic() - started, 1)}


def down(args) -> dict:
    state = load_state(args)
    for pid in state.get("pids", {}).values():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for replica in state["replicas"].values():
        try:
            stop_pod(replica["pod"])
        except subprocess.CalledProcessError as e:
            log(f"stopping {replica['pod']}: {e.stderr.strip()}")
        podman("kube", "down", replica["manifest"], check=False)
        configmaps = [
            d["metadata"]["name"]
            for d in yaml.safe_load_all(Path(replica["manifest"]).read_text())
            if d["kind"] == "ConfigMap"
        ]
        podman("volume", "rm", "-f", *configmaps, check=False)
    (args.state_dir / args.name / "state.json").unlink()
    return {"down": state["name"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="container/stack.py", description=__doc__.splitlines()[0])
    p.add_argument("--name", default="sentiment")
    p.add_argument("--state-dir", type=Path, default=ROOT / "build" / "stack")
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up")
    u.add_argument("--replicas", type=int, default=2)
    u.add_argument("--port", type=int, default=GATEWAY_PORT, help="the front balancer's port")
    u.add_argument("--replica-port-base", type=int, default=18000, help="replica i's gateway: base + i")
    u.add_argument(
        "--metrics-port-base", type=int, default=18080, help="replica i's metrics listener (the gateway's): base + i"
    )
    u.add_argument("--prometheus-port", type=int, default=9090)
    u.add_argument("--image", help="the serving image (default: the local overlay's)")
    u.add_argument("--rate", type=int, help="the gateways' requests/s per client key (default: the manifest's)")
    u.add_argument("--timeout", type=float, default=300)
    s = sub.add_parser("stop-replica")
    s.add_argument("replica", type=int)
    r = sub.add_parser("start-replica")
    r.add_argument("replica", type=int)
    r.add_argument("--timeout", type=float, default=300)
    sub.add_parser("down")
    args = p.parse_args(argv)
    result = {"up": up, "stop-replica": stop_replica, "start-replica": start_replica, "down": down}[args.command](args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
