"""Every fault once, under load, on three replicas in network namespaces (`make chaos`).

    .venv/bin/python -m bench.chaos [--hold 30] [--clients 6] [--rate 8] [--faults a,b,...]

Brings up testbed.netns.Testbed (three replicas, each a host of its own, HAProxy in
front), runs testbed.chaos.Load through the front and injects the faults of
testbed.chaos.FAULTS one at a time, each into the next replica in turn, waiting for the
replica to be back (and every request it held to end) before the next. Writes
bench/results/chaos.json and the table between the markers in docs/chaos.md, both from
this one run, with the machine named. Needs root (namespaces, veths, iptables, tmpfs, cgroups).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from testbed.chaos import CLIENT_TIMEOUT_S, FAULTS, SLOW_S, Load, Result, run_fault
from testbed.netns import Testbed

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "chaos.json"
DOC = ROOT / "docs" / "chaos.md"
BEGIN, END = "<!-- chaos table: begin (make chaos writes it) -->", "<!-- chaos table: end -->"
ORDER = [
    "worker-kill",
    "freeze",
    "net-drop",
    "link-down",
    "disk-full",
    "cpu-starved",
    "key-file-removed",
    "replica-kill",
]


def machine() -> dict[str, object]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    mem_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line
    )
    return {"nproc": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1), "cpu": cpu, "kernel": platform.release()}


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:g} s"


def back(r: dict[str, Any]) -> str:
    if r["taken_out_s"] is None:  # never out: when it answered a direct request again
        return f"never out (answers at {seconds(r['back_s'])})"
    return seconds(r["back_s"])


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| fault | hold | requests | failed (where) | slow > 5 s | taken out | full service | back in rotation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        where = ", ".join(f"{n} {k}" for k, n in sorted(r["failed_by_outcome"].items())) or "-"
        hold = f"{r['hold_s']:g} s" if r["hold_s"] else "-"
        rows.append(
            f"| {r['fault']} | {hold} | {r['requests']} | {r['failed']} ({where}) | {r['slow']}"
            f" (max {r['max_latency_s']:g} s) | {seconds(r['taken_out_s'])}"
            f" | {r['full_service_s']:g} s | {back(r)} |"
        )
    return "\n".join(rows)


def write_doc(report: dict[str, Any]) -> None:
    m = report["machine"]
    assert isinstance(m, dict)
    failed_before = f"{report['baseline_failed']} failed" if report["baseline_failed"] else "none failed"
    text = (
        f"{BEGIN}\n"
        f"Measured by `make chaos` on {report['date']}: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB,"
        f" kernel {m['kernel']}; each replica runs {report.get('pod', 'as processes')};"
        f" {report['clients']} keep-alive clients at up to {report['rate']} requests/s each"
        f" ({report['baseline_rps']} requests/s before the first fault, {failed_before}),"
        f" holds of {report['hold_s']:g} s."
        f" Raw: bench/results/chaos.json.\n\n"
        f"{table(report['results'])}\n"
        f"{END}"
    )
    doc = DOC.read_text()
    start, end = doc.index(BEGIN), doc.index(END) + len(END)
    DOC.write_text(doc[:start] + text + doc[end:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--hold", type=float, default=30.0, help="seconds a timed fault lasts")
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--rate", type=float, default=8.0, help="requests/s per client at most")
    p.add_argument("--faults", default=",".join(ORDER))
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "chaos" / "run")
    p.add_argument("--image", help="run the pod's containers from this image (podman), not as processes")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-doc", action="store_true", help="leave docs/chaos.md as it is")
    p.add_argument("--table-only", action="store_true", help="rewrite docs/chaos.md's table from --out, run nothing")
    args = p.parse_args(argv)
    if args.table_only:
        write_doc(json.loads(args.out.read_text()))
        return 0
    names = args.faults.split(",")
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        p.error(f"unknown faults {unknown}: {sorted(FAULTS)}")
    results: list[Result] = []
    started = time.monotonic()
    with (
        Testbed(args.workdir, replicas=3, image=args.image) as bed,
        Load(bed, clients=args.clients, rate=args.rate) as load,
    ):
        time.sleep(15)
        baseline = load.between(0, time.monotonic())
        baseline_rps = round(len(baseline) / 15, 1)
        if any(q.outcome != "ok" for q in baseline):
            print(f"failures before any fault: {[q.outcome for q in baseline if q.outcome != 'ok']}", file=sys.stderr)
        for i, name in enumerate(names):
            replica = bed.replicas[i % len(bed.replicas)]
            result = run_fault(bed, load, FAULTS[name], replica, hold_s=args.hold)
            results.append(result)
            print(json.dumps(dataclasses.asdict(result)), flush=True)
            deadline = time.monotonic() + 240  # every replica back in rotation before the next fault
            while time.monotonic() < deadline and any(bed.front_state(r) != "UP" for r in bed.replicas):
                time.sleep(0.5)
            time.sleep(5)
        client_errors = dict(load.errors)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "replicas": 3,
        "pod": f"the image {args.image} (podman)" if args.image else "the image's supervisors and configs as processes",
        "clients": args.clients,
        "rate": args.rate,
        "hold_s": args.hold,
        "slow_s": SLOW_S,
        "client_timeout_s": CLIENT_TIMEOUT_S,
        "baseline_rps": baseline_rps,
        "baseline_failed": sum(1 for q in baseline if q.outcome != "ok"),
        "client_errors": client_errors,
        "seconds": round(time.monotonic() - started),
        "results": [dataclasses.asdict(r) for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_doc:
        write_doc(report)
    print(table(report["results"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
