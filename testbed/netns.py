"""Replicas of the pod as hosts of their own: each in a network namespace with its own
address, a front HAProxy over them, and a small kubelet that restarts what exits.

    with Testbed(Path("build/chaos/run"), replicas=3) as bed:
        bed.front_url, bed.client_key            # send load through the front
        bed.replicas[0].freeze() ...             # faults: testbed/chaos.py

What each replica is, as the Kubernetes pod is (deploy/kubernetes/base/deployment.yaml),
its two containers run from the image with podman (`image=`: `make chaos`, `make soak`),
or the same supervisors and configs run as processes (the default: the CI's short form,
tests/integration/test_chaos.py, which needs no image):

- a network namespace `chaos-<tag>-r<i>` with loopback and one veth to the root namespace:
  10.213.N.2/24 inside, 10.213.N.1/24 on the host end (N free on this machine, chosen at
  start). TorchServe listens on the namespace's loopback (8080-8082, 7070-7071: the same
  ports in every replica, as in every pod), the gateway on 10.213.N.2:8000 and its metrics
  listener (TorchServe's metrics, GET /metrics only: what Prometheus scrapes in the pod) on
  10.213.N.2:9082.
- its writable directories (TorchServe's working directory, the gateway's) on a tmpfs of
  its own (the pod's emptyDir, `--disk-mb`): a disk that can be filled.
- two containers, each in cgroups of its own (v2 for the processes, v1 `cpu` for a CPU
  limit), read from deployment.yaml (testbed/pod.py): `torchserve` and `gateway`, with the
  manifest's arguments, but a 30 s grace, a 2 s drain, no rate limit to speak of, the
  replica's address, and as the ConfigMap's torchserve.properties TorchServe's ports and
  one worker. As processes, each is a command in the namespace, the manifest's mount
  paths the replica's directories; from the image, `podman run --network ns:...` with the
  manifest's volumes as the replica's directories, read-only root and no capabilities,
  its processes in a cgroup podman makes below the container's own (--cgroup-parent;
  `ip netns exec` would hide the cgroup mounts from runc). Every process a container
  starts stays in its cgroups, so a container is stopped, frozen or killed whole, by the
  pids they list.
- a kubelet (one thread for all replicas) that restarts a container whose process exited
  (restartPolicy Always, without the back-off) and runs TorchServe's liveness probe
  (python -m server.health in the namespace, at the manifest's period, timeout and
  failures: every 10 s, 3 failures restart it; its startup probe, 5 s x 60, before
  that). A frozen replica's kubelet is frozen with it (`paused`).

The front: HAProxy in the root namespace on 127.0.0.1, with testbed/front.py's FRONT_CONF
(the Service's stand-in, as container/stack.py runs it too: /readyz checks every second,
out after 2 failures, back after 2 passes, no retries, no redispatch), plus a stats
socket through which the testbed follows each replica's state. Everything is torn down
by name and pid in reverse order, also when bringing up fails, in bounded time.
"""

from __future__ import annotations

import csv
import io
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from common import events
from common.paths import ROOT
from testbed.front import FRONT_CONF
from testbed.local_server import ONE_WORKER_MODELS
from testbed.pod import ContainerSpec, pod
from testbed.podman import podman, podman_env

NET = "10.213"
POD = pod()  # deployment.yaml's pod: what each replica runs
GATEWAY_PORT = POD.containers["gateway"].ports["http"]
METRICS_PORT = POD.containers["gateway"].ports["metrics"]  # the gateway's metrics listener
IMAGE_UID = POD.uid  # the pod's user (the image's USER too)
# What the testbed sets differently from the pod: a shorter grace and drain (its faults
# are seconds apart), no rate limit on its one client key, the replica's own address
GRACE_S = "30"
GATEWAY_FLAGS = {"rate": "10000", "burst": "20000", "drain_delay": "2"}
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_parents() -> tuple[Path, Path, bool]:
    """Where a container's cgroups go: (the one whose cgroup.procs lists its processes, the
    one that limits its CPU, whether that limit is cgroup v2's cpu.max). On a machine with
    cgroup v2 alone (Debian 12's default) one group does both; on the hybrid layout (v1
    controllers, v2 mounted at unified, as here) the v2 group lists and v1's cpu limits."""
    if (CGROUP_ROOT / "cgroup.controllers").is_file():
        try:  # let the children limit CPU; the root group may hold processes itself
            (CGROUP_ROOT / "cgroup.subtree_control").write_text("+cpu")
        except OSError:
            pass
        return CGROUP_ROOT, CGROUP_ROOT, True
    return CGROUP_ROOT / "unified", CGROUP_ROOT / "cpu", False


# the ConfigMap's torchserve.properties (deploy/kubernetes/base/configmap.yaml) as the
# testbed mounts it: TorchServe's ports on the namespace's loopback, one worker
TORCHSERVE_SETTINGS = "torchserve.properties"
PORTS_PROFILE = (
    "inference_address=http://127.0.0.1:8080\n"
    "management_address=http://127.0.0.1:8081\n"
    "metrics_address=http://127.0.0.1:8082\n"
    "grpc_inference_port=7070\n"
    "grpc_management_port=7071\n"
    f"models={ONE_WORKER_MODELS}\n"
)
# a line of HAProxy's httplog: accept date, backend/server, timers, status, ..., termination state
HTTPLOG = re.compile(
    r"\[(?P<date>\d+/\w+/\d+:\d+:\d+:\d+\.\d+)\] front \S+?/(?P<server>\S+) \S+ "
    r"(?P<status>-?\d+) \S+ \S+ \S+ (?P<term>\S{4})"
)
# the pod's probes for the TorchServe container, as the kubelet stand-in runs them
_LIVENESS, _STARTUP = POD.containers["torchserve"].liveness, POD.containers["torchserve"].startup
assert _LIVENESS is not None and _STARTUP is not None, "deployment.yaml: TorchServe's probes"
LIVENESS_PERIOD_S, LIVENESS_FAILURES, PROBE_TIMEOUT_S = _LIVENESS.period_s, _LIVENESS.failures, _LIVENESS.timeout_s
STARTUP_PERIOD_S, STARTUP_FAILURES = _STARTUP.period_s, _STARTUP.failures


def log(message: str) -> None:
    events.log("testbed", message)


def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=timeout)


def free_octets(count: int) -> list[int]:
    """N of 10.213.N.0/24 that no address or route of this machine uses."""
    used = run("ip", "-4", "addr").stdout + run("ip", "-4", "route").stdout
    start = random.randrange(1, 250)
    octets = [(start + k) % 250 + 1 for k in range(250)]
    free = [n for n in octets if f"{NET}.{n}." not in used]
    if len(free) < count:
        raise RuntimeError(f"no {count} free subnets in {NET}.0.0/16")
    return free[:count]


@dataclass
class Container:
    """A command run in a namespace and in cgroups of its own; every process it starts stays there."""

    name: str  # unique on this machine: the cgroups' names (and the podman container's)
    netns: str
    argv: list[str]
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)
    # argv is a `podman run` that joins the namespace and puts the container's processes
    # in cgroups below this container's own (--cgroup-parent); the podman client stays out
    # of them, so that they hold the container's processes only
    podman: bool = False
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0

    @property
    def cgroup(self) -> Path:
        return cgroup_parents()[0] / self.name

    @property
    def cpu_cgroup(self) -> Path:
        return cgroup_parents()[1] / self.name

    def create_cgroups(self) -> None:
        self.cgroup.mkdir(exist_ok=True)
        self.cpu_cgroup.mkdir(exist_ok=True)

    def start(self) -> None:
        if self.podman:  # podman joins the namespace and places the processes itself
            command = self.argv
        else:  # the shell puts itself into the cgroups, then becomes `ip netns exec`, then the command
            script = 'echo $$ > "$1" && echo $$ > "$2" && shift 2 && exec "$@"'
            cgroups = [str(self.cgroup / "cgroup.procs"), str(self.cpu_cgroup / "cgroup.procs")]
            command = ["sh", "-c", script, "sh", *cgroups, "ip", "netns", "exec", self.netns, *self.argv]
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=dict(os.environ, **self.env),
            )
        self.started_at = time.monotonic()

    def pids(self) -> list[int]:
        """The processes in the container's cgroup and the groups below it (podman's)."""
        pids = []
        for procs in self.cgroup.glob("**/cgroup.procs"):  # its own first
            try:
                pids += [int(p) for p in procs.read_text().split()]
            except FileNotFoundError:
                pass
        return list(dict.fromkeys(pids))

    def signal(self, sig: int) -> list[int]:
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, timeout: float = 15.0) -> None:
        """SIGKILL to every process of the container (SIGCONT too: a stopped one goes), until none is left."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.signal(signal.SIGKILL)
            self.signal(signal.SIGCONT)
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            if self.podman and self.proc is not None and self.proc.poll() is None:
                self.proc.kill()  # the podman client, outside the cgroups
            if not pids and (self.proc is None or self.proc.poll() is not None):
                if self.podman:  # what is left of the container in podman's state: by its name
                    podman("rm", "--force", "--time", "0", self.name, check=False, timeout=60)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: processes {pids} left after SIGKILL")
            time.sleep(0.1)

    def set_cpu_limit(self, fraction: float | None) -> None:
        """At most `fraction` of one CPU (None: no limit): cpu.max on cgroup v2, else the v1
        cpu controller's quota."""
        quota = None if fraction is None else max(1000, int(100_000 * fraction))
        if cgroup_parents()[2]:
            (self.cpu_cgroup / "cpu.max").write_text(f"{quota or 'max'} 100000")
            return
        (self.cpu_cgroup / "cpu.cfs_period_us").write_text("100000")
        (self.cpu_cgroup / "cpu.cfs_quota_us").write_text(str(quota or -1))

    def rss_kib(self) -> dict[int, tuple[str, int, int]]:
        """{pid: (command, RSS in KiB, open file descriptors)} of the container's processes."""
        out = {}
        for pid in self.pids():
            try:
                cmd = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))[:200]
                status = Path(f"/proc/{pid}/status").read_text()
                rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            out[pid] = (cmd, rss, fds)
        return out

    def remove_cgroups(self) -> None:
        groups = [self.cgroup, self.cpu_cgroup]  # one group on cgroup v2 alone
        if self.podman:  # podman made one below this name in every controller
            groups += CGROUP_ROOT.glob(f"*/{self.name}")
        for top in dict.fromkeys(groups):
            below = [p for p in top.rglob("*") if p.is_dir()] if top.is_dir() else []
            # deepest first: a group goes only once the groups below it have
            for group in sorted(below, key=lambda p: len(p.parts), reverse=True) + [top]:
                for _ in range(50):
                    try:
                        group.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:  # busy: a process still leaving
                        time.sleep(0.1)


@dataclass
class Replica:
    index: int
    tag: str
    octet: int
    root: Path  # its tmpfs: the pod's writable directories
    disk_mb: int
    clients_file: Path
    image: str | None = None  # run the pod's containers from this image (podman), else as processes
    containers: dict[str, Container] = field(default_factory=dict)
    paused: bool = False  # a frozen host: its kubelet is frozen too
    # the kubelet's view of the TorchServe container: probes, by the container's start
    healthy_once: bool = False
    probe_failures: int = 0
    next_probe: float = 0.0

    @property
    def name(self) -> str:
        return f"replica{self.index}"

    @property
    def netns(self) -> str:
        return f"chaos-{self.tag}-r{self.index}"

    @property
    def host_if(self) -> str:
        return f"ch{self.tag}h{self.index}"

    @property
    def ns_if(self) -> str:
        return f"ch{self.tag}n{self.index}"

    @property
    def address(self) -> str:
        return f"{NET}.{self.octet}.2"

    @property
    def url(self) -> str:
        return f"http://{self.address}:{GATEWAY_PORT}"

    @property
    def metrics_url(self) -> str:
        """TorchServe's metrics, through the replica's gateway (its metrics listener)."""
        return f"http://{self.address}:{METRICS_PORT}/metrics"

    @property
    def ts_dir(self) -> Path:
        return self.root / "torchserve"

    @property
    def gw_dir(self) -> Path:
        return self.root / "gateway"

    @property
    def ts_tmp(self) -> Path:  # the image's /tmp for TorchServe: the unpacked archive, the workers' sockets
        return self.root / "torchserve-tmp"

    @property
    def settings_dir(self) -> Path:  # the ConfigMap's files (the node's, not the pod's disk)
        return self.logs / "settings"

    def volumes(self) -> dict[str, Path]:
        """deployment.yaml's volumes by name, as the replica's directories."""
        return {
            "torchserve": self.ts_dir,
            "torchserve-tmp": self.ts_tmp,
            "gateway-tmp": self.gw_dir,
            "settings": self.settings_dir,
            "clients": self.clients_file.parent,
        }

    @property
    def logs(self) -> Path:  # the node's container logs: not the pod's disk
        return self.root.parent / f"{self.name}-logs"

    def exec(self, *cmd: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.netns, *cmd, timeout=timeout, check=check)

    def make_containers(self) -> None:
        """The pod's two containers, with deployment.yaml's arguments (GRACE_S, GATEWAY_FLAGS
        and the replica's address instead of the pod's), from the image or as processes."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.settings_dir.mkdir(exist_ok=True)
        (self.settings_dir / TORCHSERVE_SETTINGS).write_text(PORTS_PROFILE)
        specs = POD.containers
        args = {
            "torchserve": specs["torchserve"].args_with(grace=GRACE_S),
            "gateway": specs["gateway"].args_with(listen=self.address, **GATEWAY_FLAGS),
        }
        if self.image is not None:
            self._make_image_containers(self.image, args)
            return
        env = {"SENTIMENT_LOG_TO": "stdout", "PYTHONUNBUFFERED": "1", "TS_WORKDIR": str(self.ts_dir)}
        self.containers = {
            name: Container(
                self.container_name(name),
                self.netns,
                self._as_process(specs[name], args[name]),
                self.logs / f"{name}.log",
                env,
            )
            for name in ("torchserve", "gateway")
        }

    def container_name(self, name: str) -> str:
        """The name of the replica's container `name` (its cgroups' and podman's)."""
        return f"{self.netns}-{name}"

    def _as_process(self, spec: ContainerSpec, args: list[str]) -> list[str]:
        """A container's arguments for a process on this machine: this Python, the image's
        /app as the repository, and each mount path as the replica's directory for it."""
        volumes = self.volumes()
        paths = {"/app": ROOT, **{path: volumes[name] for name, path in spec.mounts.items()}}
        out = [sys.executable if args[0] == "python" else args[0]]
        for arg in args[1:]:
            for prefix in sorted(paths, key=len, reverse=True):
                if arg == prefix or arg.startswith(prefix + "/"):
                    arg = str(paths[prefix]) + arg[len(prefix) :]
                    break
            out.append(arg)
        return out

    def _make_image_containers(self, image: str, args: dict[str, list[str]]) -> None:
        """The pod's two containers from the image, as deployment.yaml runs them: its
        arguments, a read-only root, no capabilities, the image's user, its volumes as
        directories of the replica's tmpfs (owned by that user), read-only where it says so."""
        for d in (self.ts_dir, self.ts_tmp, self.gw_dir):
            d.mkdir(exist_ok=True)
            os.chown(d, IMAGE_UID, IMAGE_UID)
        os.chown(self.clients_file, IMAGE_UID, IMAGE_UID)  # the Secret's file, readable by the pod's user only
        volumes = self.volumes()
        env = {"CONTAINERS_CONF": podman_env()["CONTAINERS_CONF"]}
        self.containers = {}
        for name in ("torchserve", "gateway"):
            spec = POD.containers[name]
            mounts = [
                a
                for volume, path in spec.mounts.items()
                for a in ("--volume", f"{volumes[volume]}:{path}" + (":ro" if volume in spec.read_only else ""))
            ]
            container = self.container_name(name)
            argv = [
                "podman",
                "run",
                "--rm",
                "--replace",
                "--name",
                container,
                "--network",
                f"ns:/run/netns/{self.netns}",
                "--cgroup-parent",
                f"/{container}",
                "--read-only",
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges",
                *mounts,
                image,
                *args[name],
            ]
            self.containers[name] = Container(container, self.netns, argv, self.logs / f"{name}.log", env, podman=True)

    def all_pids(self) -> list[int]:
        return [pid for c in self.containers.values() for pid in c.pids()]

    def signal_all(self, sig: int) -> list[int]:
        return [pid for c in self.containers.values() for pid in c.signal(sig)]

    def readyz(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=timeout) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def worker_pids(self) -> list[int]:
        """TorchServe's Python workers of this replica: the processes of its torchserve
        container that run TorchServe's model_service_worker."""
        return [
            pid for pid, (cmd, _, _) in self.containers["torchserve"].rss_kib().items() if "model_service_worker" in cmd
        ]


class Front:
    """HAProxy over the replicas' gateways (FRONT_CONF) with a stats socket; a thread follows each server's state."""

    def __init__(self, workdir: Path, port: int, replicas: list[Replica], retry_connect: bool = False):
        self.workdir, self.port, self.replicas, self.retry_connect = workdir, port, replicas, retry_connect
        self.socket = workdir / "haproxy.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.transitions: list[tuple[float, str, str]] = []  # (monotonic time, server, UP/DOWN/...)
        self.state: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="front-follower", daemon=True)

    def config(self) -> str:
        servers = "\n".join(f"    server {r.name} {r.address}:{GATEWAY_PORT} check" for r in self.replicas)
        text = FRONT_CONF.format(workdir=self.workdir.resolve(), servers=servers, port=self.port)
        text = text.replace("global\n", f"global\n    stats socket {self.socket} mode 600 level admin\n", 1)
        # every request logged (httplog at info), for where each failed one ended
        text = text.replace("local0 warning", "local0 info", 1)
        if self.retry_connect:
            text = text.replace(
                "    retries 0\n", "    retries 1\n    retry-on conn-failure\n    option redispatch\n", 1
            )
        return text

    def log_lines(self) -> list[tuple[float, str, int, str]]:
        """The front's httplog lines as (accept time, server, status, termination state); wall-clock times."""
        out = []
        text = (self.workdir / "haproxy.log").read_text(errors="replace")
        for m in HTTPLOG.finditer(text):
            accepted = datetime.strptime(m["date"], "%d/%b/%Y:%H:%M:%S.%f").timestamp()
            out.append((accepted, m["server"], int(m["status"]), m["term"]))
        return out

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "haproxy.cfg"
        config.write_text(self.config())
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        run(haproxy, "-c", "-q", "-f", str(config))
        with open(self.workdir / "haproxy.log", "ab") as out:
            self.proc = subprocess.Popen(
                [haproxy, "-f", str(config)], stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + 15
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"HAProxy did not start: {(self.workdir / 'haproxy.log').read_text()[-2000:]}")
            time.sleep(0.1)
        self._thread.start()

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(self.socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's `show stat` for the replicas' servers, by server name."""
        text = self.command("show stat").lstrip("# ")
        return {row["svname"]: row for row in csv.DictReader(io.StringIO(text)) if row["pxname"] == "replicas"}

    def _follow(self) -> None:
        while not self._stop.wait(0.1):
            try:
                stats = self.stats()
            except OSError:
                continue
            now = time.monotonic()
            for name, row in stats.items():
                if name in ("BACKEND", "FRONTEND"):
                    continue
                status = row["status"]  # "UP", "DOWN", or on the way: "UP 1/2" (failing), "DOWN 1/2" (passing)
                if self.state.get(name) != status:
                    self.state[name] = status
                    self.transitions.append((now, name, status))

    def in_flight(self, server: str) -> int:
        return int(self.stats()[server]["scur"] or 0)

    def wait_state(self, server: str, status: str, timeout: float, since: float = 0.0) -> float | None:
        """The first time (monotonic) at or after `since` that `server` reached `status`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for t, name, s in list(self.transitions):
                if name == server and s == status and t >= since:
                    return t
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class Testbed:
    """N replicas in namespaces of their own, a front, a kubelet; `with` brings it all down again."""

    __test__ = False  # not a pytest class, though its name says Test

    def __init__(
        self,
        workdir: Path,
        replicas: int = 3,
        front_port: int | None = None,
        disk_mb: int = 384,
        retry_connect: bool = False,
        image: str | None = None,
    ):
        from common.net import free_port

        self.workdir = Path(workdir).resolve()
        self.tag = secrets.token_hex(2)
        self.count, self.disk_mb, self.retry_connect, self.image = replicas, disk_mb, retry_connect, image
        self.front_port = front_port or free_port()
        self.client_key = secrets.token_urlsafe(24)
        self.replicas: list[Replica] = []
        self.front: Front | None = None
        self._undo: list[tuple[str, Callable[[], object]]] = []
        self._kubelet_stop = threading.Event()
        self._kubelet = threading.Thread(target=self._kubelet_loop, name="kubelet", daemon=True)
        self.kubelet_events: list[tuple[float, str, str]] = []  # (monotonic, replica, what)
        self._lock = threading.Lock()

    @property
    def front_url(self) -> str:
        return f"http://127.0.0.1:{self.front_port}"

    def __enter__(self) -> Testbed:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def front_state(self, replica: Replica) -> str:
        return "" if self.front is None else self.front.state.get(replica.name, "")

    def _later(self, what: str, undo: Callable[[], object]) -> None:
        self._undo.append((what, undo))

    def up(self, timeout: float = 480) -> None:
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # the Secret's volume: a directory holding the clients file
        clients_file = self.workdir / "clients-secret" / "clients"
        clients_file.parent.mkdir(exist_ok=True)
        fd = os.open(clients_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"chaos={self.client_key}\n")
        for i, octet in enumerate(free_octets(self.count), 1):
            replica = Replica(i, self.tag, octet, self.workdir / f"replica{i}", self.disk_mb, clients_file, self.image)
            self.replicas.append(replica)
            self._network(replica)
            self._disk(replica)
            replica.make_containers()
            for container in replica.containers.values():
                container.create_cgroups()
                self._later(f"{container.name}: processes and cgroups", self._remove_container(container))
        for replica in self.replicas:
            replica.containers["torchserve"].start()
        for replica in self.replicas:
            replica.containers["gateway"].start()
        self._kubelet.start()
        self._later("kubelet", self._stop_kubelet)
        for replica in self.replicas:
            while not replica.readyz():
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"{replica.name} not ready after {timeout:.0f}s: see {replica.logs}")
                time.sleep(1)
            log(f"{replica.name} ready at {replica.url} ({time.monotonic() - started:.0f}s)")
        self.front = Front(self.workdir / "front", self.front_port, self.replicas, self.retry_connect)
        self._later("front", self.front.stop)
        self.front.start()
        for replica in self.replicas:
            if self.front.wait_state(replica.name, "UP", timeout=30) is None:
                raise TimeoutError(f"the front does not see {replica.name} UP")
        log(f"front on {self.front_url} over {self.count} replicas ({time.monotonic() - started:.0f}s)")

    def _network(self, r: Replica) -> None:
        # while the veth is down or gone, the subnet is unreachable: never the default route
        subnet = f"{NET}.{r.octet}.0/24"
        run("ip", "route", "add", "unreachable", subnet, "metric", "65000")
        self._later(f"route {subnet}", lambda: run("ip", "route", "del", "unreachable", subnet, check=False))
        run("ip", "netns", "add", r.netns)
        self._later(f"netns {r.netns}", lambda: run("ip", "netns", "del", r.netns, check=False))
        r.exec("ip", "link", "set", "lo", "up")
        run("ip", "link", "add", r.host_if, "type", "veth", "peer", "name", r.ns_if)
        self._later(f"veth {r.host_if}", lambda: run("ip", "link", "del", r.host_if, check=False))
        run("ip", "link", "set", r.ns_if, "netns", r.netns)
        run("ip", "addr", "add", f"{NET}.{r.octet}.1/24", "dev", r.host_if)
        run("ip", "link", "set", r.host_if, "up")
        r.exec("ip", "addr", "add", f"{r.address}/24", "dev", r.ns_if)
        r.exec("ip", "link", "set", r.ns_if, "up")

    def _disk(self, r: Replica) -> None:
        r.root.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "tmpfs", "-o", f"size={r.disk_mb}m,mode=0700", f"chaos-{r.tag}-r{r.index}", str(r.root))
        self._later(f"tmpfs {r.root}", lambda: run("umount", "-l", str(r.root), check=False))
        for d in (r.ts_dir, r.gw_dir):
            d.mkdir()

    def _remove_container(self, container: Container) -> Callable[[], None]:
        def undo() -> None:
            try:
                container.kill()
            finally:
                container.remove_cgroups()

        return undo

    def _stop_kubelet(self) -> None:
        self._kubelet_stop.set()
        self._kubelet.join(timeout=15)

    def down(self) -> None:
        """Everything `up` made, in reverse order; each step runs even when one before it failed."""
        self._kubelet_stop.set()
        errors = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as e:
                errors.append(f"{what}: {e}")
        if errors:
            log(f"teardown: {errors}")

    # the kubelet: restarts exited containers and runs TorchServe's liveness probe

    def note(self, replica: Replica, what: str) -> None:
        with self._lock:
            self.kubelet_events.append((time.monotonic(), replica.name, what))
        log(f"{replica.name}: {what}")

    def restart(self, replica: Replica, name: str, why: str) -> None:
        container = replica.containers[name]
        container.kill()
        container.restarts += 1
        if name == "torchserve":
            replica.healthy_once, replica.probe_failures = False, 0
            replica.next_probe = time.monotonic() + STARTUP_PERIOD_S
        container.start()
        self.note(replica, f"restarted {name} ({why})")

    def _probe(self, replica: Replica) -> bool:
        result = replica.exec(
            sys.executable,
            "-m",
            "server.health",
            "--workdir",
            str(replica.ts_dir),
            "--timeout",
            str(PROBE_TIMEOUT_S),
            timeout=PROBE_TIMEOUT_S + 10,
            check=False,
        )
        return result.returncode == 0

    def _kubelet_loop(self) -> None:
        for replica in self.replicas:
            replica.next_probe = time.monotonic() + STARTUP_PERIOD_S
        while not self._kubelet_stop.wait(0.5):
            for replica in self.replicas:
                if replica.paused or self._kubelet_stop.is_set():
                    continue
                try:
                    self._tend(replica)
                except Exception as e:
                    log(f"kubelet: {replica.name}: {type(e).__name__}: {e}")

    def _tend(self, replica: Replica) -> None:
        for name, container in replica.containers.items():
            if container.proc is not None and not container.running():
                self.restart(replica, name, f"exited with {container.proc.returncode}")
        now = time.monotonic()
        if now < replica.next_probe:
            return
        ok = self._probe(replica)
        if replica.paused:  # frozen while probing: says nothing
            return
        if not replica.healthy_once:
            replica.next_probe = time.monotonic() + STARTUP_PERIOD_S
            if ok:
                replica.healthy_once, replica.probe_failures = True, 0
            else:
                replica.probe_failures += 1
                if replica.probe_failures >= STARTUP_FAILURES:
                    self.restart(replica, "torchserve", "startup probe failed")
            return
        replica.next_probe = time.monotonic() + LIVENESS_PERIOD_S
        replica.probe_failures = 0 if ok else replica.probe_failures + 1
        if not ok:
            self.note(replica, f"liveness probe failed ({replica.probe_failures}/{LIVENESS_FAILURES})")
        if replica.probe_failures >= LIVENESS_FAILURES:
            self.restart(replica, "torchserve", "liveness probe failed")
