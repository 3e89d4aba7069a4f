"""A soak with faults (`make soak`): steady moderate load through the front of three
replicas in network namespaces for --duration seconds (an hour by default), one fault
every --every seconds (five minutes), and every --sample seconds (a minute): each
replica's TorchServe frontend (the JVM), workers, gateway (nginx and its Python) and the
front's memory (RSS) and open file descriptors, with the requests and failures so far.

    .venv/bin/python -m bench.soak_faults [--duration 3600] [--every 300] [--sample 60]

Writes bench/results/soak_faults.json and soak_faults.png (memory, descriptors and
failures over time, with the faults marked); flat is the target. The faults cycle through
testbed.chaos.FAULTS (timed ones held --hold seconds), each into the next replica.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from testbed.chaos import FAULTS, Load, run_fault
from testbed.netns import Replica, Testbed

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "soak_faults"
CYCLE = ["worker-kill", "freeze", "net-drop", "replica-kill", "disk-full", "key-file-removed", "link-down"]


def role(container: str, cmd: str) -> str:
    if container == "gateway":
        return "nginx" if "nginx" in cmd else "gateway"
    if "model_service_worker" in cmd:
        return "worker"
    if "java" in cmd.split(" ", 1)[0] or "org.pytorch.serve" in cmd:
        return "frontend"
    return "supervisor"


def proc_usage(pid: int) -> tuple[int, int]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return 0, 0


def sample(bed: Testbed, load: Load, t0: float) -> dict[str, Any]:
    """RSS (MiB) and descriptors by replica and role, summed over processes; the front's; failures so far."""
    point: dict[str, Any] = {"t_s": round(time.monotonic() - t0, 1), "replicas": {}}
    for r in bed.replicas:
        by_role: dict[str, dict[str, float]] = {}
        for name, container in r.containers.items():
            for cmd, rss, fds in container.rss_kib().values():
                entry = by_role.setdefault(role(name, cmd), {"rss_mib": 0.0, "fds": 0})
                entry["rss_mib"] = round(entry["rss_mib"] + rss / 1024, 1)
                entry["fds"] += fds
        point["replicas"][r.name] = by_role
    if bed.front is not None and bed.front.proc is not None:
        rss, fds = proc_usage(bed.front.proc.pid)
        point["front"] = {"rss_mib": round(rss / 1024, 1), "fds": fds}
    with load._lock:
        point["requests"] = len(load.requests)
        point["failed"] = sum(1 for q in load.requests if q.outcome != "ok")
    return point


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    t = [s["t_s"] / 60 for s in samples]
    fig, (mem, fds, err) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    # a colour per process role, a line style per replica; a sample where the process was
    # not running (killed, restarting) is a gap, not a drop to 0
    colours = {"frontend": "tab:blue", "worker": "tab:orange", "nginx": "tab:green", "gateway": "tab:purple"}
    styles: list[Literal["-", "--", ":", "-."]] = ["-", "--", ":", "-."]
    nan = float("nan")
    for name, style in zip(samples[0]["replicas"], styles * 4, strict=False):
        for role, colour in colours.items():
            for ax, key in ((mem, "rss_mib"), (fds, "fds")):
                values = [s["replicas"][name].get(role, {}).get(key, nan) for s in samples]
                ax.plot(t, values, style, color=colour, linewidth=1)
    front = [s.get("front") or {} for s in samples]
    mem.plot(t, [f.get("rss_mib", nan) for f in front], color="black", linewidth=1)
    fds.plot(t, [f.get("fds", nan) for f in front], color="black", linewidth=1)
    from matplotlib.lines import Line2D

    legend = [Line2D([], [], color=c, label=role) for role, c in colours.items()]
    legend.append(Line2D([], [], color="black", label="front (HAProxy)"))
    legend += [
        Line2D([], [], color="grey", linestyle=st, label=name)
        for name, st in zip(samples[0]["replicas"], styles * 4, strict=False)
    ]
    err.plot(t, [s["failed"] for s in samples], "r-", label="failed requests (cumulative)")
    for f in report["faults"]:
        for ax in (mem, fds, err):
            ax.axvline(f["at_s"] / 60, color="grey", alpha=0.4)
        err.annotate(f["fault"], (f["at_s"] / 60, 0), rotation=90, fontsize=7, va="bottom")
    mem.set_ylabel("RSS (MiB)")
    fds.set_ylabel("open descriptors")
    err.set_ylabel("failed requests")
    err.set_xlabel("minutes")
    mem.legend(handles=legend, fontsize=7, ncol=4)
    fds.legend(handles=legend, fontsize=7, ncol=4)
    err.legend(fontsize=8)
    mem.set_title(
        f"soak: {report['duration_s'] / 60:g} min, {report['clients']} clients at <= {report['rate']}/s, "
        f"a fault every {report['every_s']:g} s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak_faults", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=3600.0)
    p.add_argument("--every", type=float, default=300.0, help="seconds between faults")
    p.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    p.add_argument("--hold", type=float, default=30.0, help="seconds a timed fault lasts")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rate", type=float, default=5.0, help="requests/s per client at most")
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "chaos" / "soak")
    p.add_argument("--image", help="run the pod's containers from this image (podman), not as processes")
    p.add_argument("--out", type=Path, default=OUT, help="results: OUT.json and OUT.png")
    p.add_argument("--plot-only", action="store_true", help="redraw OUT.png from OUT.json, run nothing")
    args = p.parse_args(argv)
    if args.plot_only:
        plot(json.loads(args.out.with_suffix(".json").read_text()), args.out.with_suffix(".png"))
        return 0
    samples: list[dict[str, Any]] = []
    faults: list[dict[str, Any]] = []
    with (
        Testbed(args.workdir, replicas=3, image=args.image) as bed,
        Load(bed, clients=args.clients, rate=args.rate) as load,
    ):
        t0 = time.monotonic()
        stop = threading.Event()

        def sampler() -> None:
            while True:
                samples.append(sample(bed, load, t0))
                print(json.dumps(samples[-1]), flush=True)
                if stop.wait(args.sample):
                    return

        thread = threading.Thread(target=sampler, name="sampler")
        thread.start()
        try:
            k = 0
            while time.monotonic() - t0 + args.every <= args.duration:
                time.sleep(max(0.0, t0 + (k + 1) * args.every - time.monotonic()))
                name = CYCLE[k % len(CYCLE)]
                replica: Replica = bed.replicas[k % len(bed.replicas)]
                at = time.monotonic() - t0
                result = run_fault(bed, load, FAULTS[name], replica, hold_s=args.hold)
                faults.append({"at_s": round(at, 1), **dataclasses.asdict(result)})
                print(json.dumps(faults[-1]), flush=True)
                k += 1
            time.sleep(max(0.0, t0 + args.duration - time.monotonic()))
        finally:
            stop.set()
            thread.join(timeout=30)
        samples.append(sample(bed, load, t0))
    report = {
        "pod": f"the image {args.image} (podman)" if args.image else "the image's supervisors and configs as processes",
        "duration_s": args.duration,
        "every_s": args.every,
        "sample_s": args.sample,
        "clients": args.clients,
        "rate": args.rate,
        "samples": samples,
        "faults": faults,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out.with_suffix(".png"))
    first, last = samples[0], samples[-1]
    print(f"{last['requests']} requests, {last['failed']} failed; samples {first['t_s']}-{last['t_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
