"""Turn bench/run.py's results into README.md tables, target checks and PNG charts.

    python -m bench.report [bench/results]    (re-renders from results.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path



def raw_best(results: dict, quantize: str) -> dict:
    """The best figure of one in-process model, over batch sizes and both ways of batching."""
    rows = [dict(r, way=way) for way, rs in results["raw"][quantize]["results"].items() for r in rs]
    return max(rows, key=lambda r: r["sentences_per_s"])


def raw_parallel_best(results: dict, quantize: str) -> dict:
    return max(results["raw"][quantize]["parallel"]["results"], key=lambda r: r["sentences_per_s"])


def raw_batch(results: dict, quantize: str, batch_size: int, way: str = "plain") -> dict:
    return next(r for r in results["raw"][quantize]["results"][way] if r["batch_size"] == batch_size)


def targets(results: dict) -> list[dict]:
    """Each issue target: the measured value, the bar, met or not."""
    fp32 = results["served"]["fp32"]
    int8 = results["served"]["int8"]
    c = str(results["settings"]["target_concurrency"])
    served_fp32 = fp32["load"][c]["throughput_rps"]
    best = raw_best(results, "none")
    base = results["baseline"][c]
    raw_b1 = raw_batch(results, "none", 1)["batch_p50_ms"]
    raw_parallel_b1 = results["raw"]["none"]["parallel"]["results"][0]["batch_p50_ms"]
    accuracy_gap = abs(int8["heldout_accuracy"] - fp32["heldout_accuracy"])
    rows = [
        {
            "target": f"fp32 served throughput at c={c} >= 0.90 x raw in-process best",
            "measured": f"{served_fp32:.1f} / {best['sentences_per_s']:.1f} (raw {best['way']} batch {best['batch_size']})"
                        f" = {served_fp32 / best['sentences_per_s']:.2f}",
            "met": served_fp32 >= 0.90 * best["sentences_per_s"],
        },
        {
            "target": f"(not a target) fp32 served at c={c} vs one raw process per core",
            "measured": f"{served_fp32:.1f} / {raw_parallel_best(results, 'none')['sentences_per_s']:.1f} = "
                        f"{served_fp32 / raw_parallel_best(results, 'none')['sentences_per_s']:.2f}",
            "met": None,
        },
        {
            "target": f"int8 served throughput >= 2.0 x fp32 served (c={c})",
            "measured": f"{int8['load'][c]['throughput_rps']:.1f} / {served_fp32:.1f} = "
                        f"{int8['load'][c]['throughput_rps'] / served_fp32:.2f}",
            "met": int8["load"][c]["throughput_rps"] >= 2.0 * served_fp32,
        },
        {
            "target": "int8 held-out accuracy within 1 point of fp32",
            "measured": f"{int8['heldout_accuracy']:.4f} vs {fp32['heldout_accuracy']:.4f} "
                        f"({accuracy_gap * 100:.2f} points)",
            "met": accuracy_gap <= 0.01,
        },
        {
            "target": f"fp32 served throughput >= 1.3 x naive baseline at c={c}",
            "measured": f"{served_fp32:.1f} / {base['throughput_rps']:.1f} = "
                        f"{served_fp32 / base['throughput_rps']:.2f}",
            "met": served_fp32 >= 1.3 * base["throughput_rps"],
        },
        {
            "target": f"fp32 served p99 no worse than baseline p99 at c={c}",
            "measured": f"{fp32['load'][c]['p99_ms']:.1f} ms vs {base['p99_ms']:.1f} ms",
            "met": fp32["load"][c]["p99_ms"] <= base["p99_ms"],
        },
        {
            "target": "fp32 served p50 at c=1 within 5 ms of the raw batch-1 latency",
            "measured": f"{fp32['load']['1']['p50_ms']:.1f} ms vs {raw_b1:.1f} ms "
                        f"(+{fp32['load']['1']['p50_ms'] - raw_b1:.1f} ms)",
            "met": fp32["load"]["1"]["p50_ms"] - raw_b1 <= 5.0,
        },
        {
            "target": "(not a target) the same against one raw process with one thread, batch 1",
            "measured": f"{fp32['load']['1']['p50_ms']:.1f} ms vs {raw_parallel_b1:.1f} ms "
                        f"(+{fp32['load']['1']['p50_ms'] - raw_parallel_b1:.1f} ms)",
            "met": None,
        },
    ]
    if "soak" in results:
        soak = results["soak"]
        rows.append({
            "target": f"soak ({soak['minutes']:g} min at c={soak['concurrency']}): worker memory growth "
                      f"< {soak['growth_limit'] * 100:.0f}%, no errors",
            "measured": f"{soak['rss_growth'] * 100:+.1f}%, {soak['errors']} errors in {soak['requests']} "
                        f"requests, {soak['worker_restarts']} worker restarts",
            "met": soak["rss_growth"] < soak["growth_limit"] and soak["errors"] == 0,
        })
    return rows


def _load_row(name: str, r: dict) -> str:
    batch = f"{r['mean_batch_size']:.1f}" if r.get("mean_batch_size") else "-"
    cores = r.get("cores_used")
    cores = f"{cores['frontend']:.2f} / {cores['workers']:.2f} / {cores['load generator']:.2f}" if cores else "-"
    return (f"| {name} | {r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['errors']} | {batch} | {cores} |")


LOAD_HEADER = ("| | sentences/s | p50 ms | p90 ms | p99 ms | errors | mean batch | "
               "cores: frontend / workers / load generator |\n"
               "|---|---|---|---|---|---|---|---|")


def markdown(results: dict) -> str:
    m = results["machine"]
    s = results["settings"]
    shipped = s["shipped"]
    out = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench.run`); every figure below comes from one run.",
        "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, {m['memory_gib']} GiB, {m['os']}; "
        f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
        f"TorchServe {m['torchserve']}; {m['date']}. The load generator runs on the same cores "
        "as the server, so read ratios, not absolute numbers.",
        "",
        f"Load: closed loop, {s['texts']}; {s['duration_s']:.0f} s measured after "
        f"{s['warmup_s']:.0f} s warm-up per point. Shipped TorchServe settings: batch size "
        f"{shipped['batchSize']}, max batch delay {shipped['maxBatchDelay']} ms, "
        f"{shipped['maxWorkers']} worker(s). Run took {results['elapsed_s'] / 60:.1f} min.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for row in targets(results):
        met = "-" if row["met"] is None else "yes" if row["met"] else "**no**"
        out.append(f"| {row['target']} | {row['measured']} | {met} |")

    micro = results["raw"]["none"]["micro_batch_size"]
    out += ["", "## Raw limit: the model in-process, no server", "",
            "*plain*: the batch padded to its longest text, one forward pass; *micro*: what the "
            f"handler does, length-sorted forward passes of at most {micro} texts. Sentences/s "
            "(batch p50 ms).", "",
            "| batch size | fp32 plain | fp32 micro | fp32 micro, 1 process per core | "
            "int8 plain | int8 micro | int8 micro, 1 process per core |",
            "|---|---|---|---|---|---|---|"]
    raw = results["raw"]
    for i, row in enumerate(raw["none"]["results"]["plain"]):
        cells = [
            f"{r['sentences_per_s']:.1f} ({r['batch_p50_ms']:.1f})"
            for q in ("none", "int8")
            for r in (raw[q]["results"]["plain"][i], raw[q]["results"]["micro"][i],
                      raw[q]["parallel"]["results"][i])
        ]
        out.append(f"| {row['batch_size']} | " + " | ".join(cells) + " |")
    out += ["", "The one-process-per-core columns run one single-threaded copy of the model per "
            "core at the same time and add their throughputs: on this machine that uses the "
            "cores better than one model with a thread per core, which is why TorchServe runs "
            "one single-threaded worker per core here."]

    out += ["", "## TorchServe as shipped: fp32 (1.0) and int8 (2.0) side by side", ""]
    for name in ("fp32", "int8"):
        side = results["served"][name]
        out += [f"**{name}** (version {side['version']}): held-out accuracy "
                f"{side['heldout_accuracy']:.4f}, worker resident memory {side['worker_rss_mib']:.0f} MiB",
                "", LOAD_HEADER.replace("| |", "| concurrency |", 1)]
        out += [_load_row(c, r) for c, r in side["load"].items()]
        out.append("")

    out += ["## REST vs gRPC (fp32 1.0, same server, one after the other)", "",
            LOAD_HEADER.replace("| |", "| API |", 1)]
    out += [_load_row(api, r) for api, r in results["rest_vs_grpc"].items()]
    out.append("")

    out += ["## Naive baseline: FastAPI, model inline, no batching (fp32)", "",
            "![served vs baseline against concurrency](concurrency.png)", "",
            LOAD_HEADER.replace("| |", "| concurrency |", 1)]
    out += [_load_row(c, r) for c, r in results["baseline"].items()]

    out += ["", f"## TorchServe batch size (fp32, concurrency {s['batch_sweep_concurrency']}, "
            f"delay {shipped['maxBatchDelay']} ms)",
            "", "![latency and throughput against batch size](batch_size_tradeoff.png)", "",
            LOAD_HEADER.replace("| |", "| batch size |", 1)]
    out += [_load_row(b, r) for b, r in results["batch_sweep"].items()]

    dc = s["delay_sweep_concurrency"]
    out += ["", f"## Max batch delay (fp32, batch {shipped['batchSize']}, concurrency 1 and {dc})", "",
            f"| delay ms | c=1 p50 ms | c={dc} sentences/s | c={dc} p50 ms | c={dc} p99 ms | c={dc} mean batch |",
            "|---|---|---|---|---|---|"]
    for d, r in results["delay_sweep"].items():
        loaded = r[f"c{dc}"]
        out.append(f"| {d} | {r['c1']['p50_ms']:.1f} | {loaded['throughput_rps']:.1f} | {loaded['p50_ms']:.1f} | "
                   f"{loaded['p99_ms']:.1f} | {loaded['mean_batch_size']:.1f} |")

    if "soak" in results:
        soak = results["soak"]
        before, after = soak["rss_before_mib"], soak["rss_after_mib"]
        out += ["", f"## Soak: {soak['minutes']:g} min at concurrency {soak['concurrency']}, as shipped", "",
                f"{soak['requests']} requests ({soak['requests_per_s']} req/s), one in ten malformed on "
                f"purpose; status counts {soak['status_counts']}; errors (neither 200 nor the expected "
                f"400): {soak['errors']}; worker restarts: {soak['worker_restarts']}.", "",
                "| worker pid | RSS after warm-up MiB | RSS after soak MiB |", "|---|---|---|"]
        out += [f"| {pid} | {before[pid]:.0f} | {after.get(pid, float('nan')):.0f} |" for pid in before]
        out += ["", f"Total growth: {soak['rss_growth'] * 100:+.2f}%."]

    out += ["", "## Workers x torch threads per worker (fp32)", "", LOAD_HEADER]
    out += [_load_row(f"{k}, c={c[1:]}", r) for k, rs in results["workers_sweep"].items() for c, r in rs.items()]
    out.append("")
    return "\n".join(out)


def charts(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = results["batch_sweep"]
    sizes = [int(b) for b in sweep]
    raw = {r["batch_size"]: r for r in results["raw"]["none"]["results"]["micro"]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(sizes, [sweep[str(b)]["throughput_rps"] for b in sizes], "o-", label=f"TorchServe, concurrency {results['settings']['batch_sweep_concurrency']}")
    left.plot(sizes, [raw[b]["sentences_per_s"] for b in sizes if b in raw], "s--", label="raw model in-process (micro-batched)")
    left.set(xlabel="batch size", ylabel="sentences / s", title="Throughput", xscale="log", xticks=sizes)
    left.set_xticklabels(sizes)
    left.set_ylim(bottom=0)
    left.legend()
    for key, style in (("p50_ms", "o-"), ("p99_ms", "^-")):
        right.plot(sizes, [sweep[str(b)][key] for b in sizes], style, label=f"TorchServe {key[:3]}")
    right.plot(sizes, [raw[b]["batch_p50_ms"] for b in sizes if b in raw], "s--", label="raw batch p50")
    right.set(xlabel="batch size", ylabel="ms", title="Latency per request", xscale="log", xticks=sizes)
    right.set_xticklabels(sizes)
    right.set_ylim(bottom=0)
    right.legend()
    fig.suptitle(f"fp32 MiniLM sentiment on {results['machine']['usable_cores']} cores: "
                 "the batch size trade-off (measured)")
    fig.tight_layout()
    fig.savefig(out / "batch_size_tradeoff.png", dpi=110)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = {
        "TorchServe int8": results["served"]["int8"]["load"],
        "TorchServe fp32": results["served"]["fp32"]["load"],
        "FastAPI baseline fp32": results["baseline"],
    }
    for name, load in series.items():
        cs = [int(c) for c in load]
        left.plot(cs, [load[str(c)]["throughput_rps"] for c in cs], "o-", label=name)
        right.plot(cs, [load[str(c)]["p99_ms"] for c in cs], "o-", label=name)
    left.set(xlabel="concurrent clients", ylabel="sentences / s", title="Throughput", xscale="log")
    right.set(xlabel="concurrent clients", ylabel="ms", title="p99 latency", xscale="log", yscale="log")
    for ax in (left, right):
        ax.set_xticks([int(c) for c in results["baseline"]])
        ax.set_xticklabels(list(results["baseline"]))
        ax.legend()
    left.set_ylim(bottom=0)
    fig.suptitle("Served vs naive baseline under closed-loop load (measured)")
    fig.tight_layout()
    fig.savefig(out / "concurrency.png", dpi=110)
    plt.close(fig)


def write_report(results: dict, out: Path) -> None:
    charts(results, out)
    (out / "README.md").write_text(markdown(results))


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results"
    write_report(json.loads((folder / "results.json").read_text()), folder)
