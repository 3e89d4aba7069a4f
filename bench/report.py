"""Turn bench/run.py's results into README.md tables, target checks and PNG charts.

    python -m bench.report [bench/results]    (re-renders from results.json)

Every setting (concurrencies, sweeps, the shipped variant) is read from results.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def raw_best(results: dict, variant: str) -> dict:
    """The best figure of one in-process model, over batch sizes and both ways of batching."""
    rows = [dict(r, way=way) for way, rs in results["raw"][variant]["results"].items() for r in rs]
    return max(rows, key=lambda r: r["sentences_per_s"])


def raw_parallel_best(results: dict, variant: str) -> dict:
    return max(results["raw"][variant]["parallel"]["results"], key=lambda r: r["sentences_per_s"])


def raw_batch(results: dict, variant: str, batch_size: int, way: str = "plain") -> dict:
    return next(r for r in results["raw"][variant]["results"][way] if r["batch_size"] == batch_size)


def ratio(a: float, b: float) -> str:
    return f"{a:.1f} / {b:.1f} = {a / b:.2f}"


def targets(results: dict) -> list[dict]:
    """Each target: the measured value, the bar, met or not."""
    s = results["settings"]
    c = str(s["target_concurrency"])
    shipped = s["shipped_variant"]
    served = results["served"]
    ship = served[shipped]
    ref = served[s["reference"]]
    lit = results["litserve"]["load"]
    base = results["baseline"]
    rows = [
        {
            "target": f"shipped ({shipped}) at c={c} >= 2.5 x LitServe's best ({results['litserve']['best']})",
            "measured": ratio(ship["load"][c]["throughput_rps"], lit[c]["throughput_rps"]),
            "met": ship["load"][c]["throughput_rps"] >= 2.5 * lit[c]["throughput_rps"],
        },
    ]
    # like for like: LitServe on the very graph and backend code the shipped archive runs
    like = results["litserve_int8"]
    for cc, bar in (("16", 1.5), ("64", 1.8)):
        rows.append(
            {
                "target": f"shipped at c={cc} >= {bar} x LitServe on the same int8 graph ({like['best']})",
                "measured": ratio(ship["load"][cc]["throughput_rps"], like["load"][cc]["throughput_rps"]),
                "met": ship["load"][cc]["throughput_rps"] >= bar * like["load"][cc]["throughput_rps"],
            }
        )
    rows.append(
        {
            "target": "shipped p50 at c=1 no slower than LitServe's on the same int8 graph",
            "measured": f"{ship['load']['1']['p50_ms']:.1f} ms vs {like['load']['1']['p50_ms']:.1f} ms",
            "met": ship["load"]["1"]["p50_ms"] <= like["load"]["1"]["p50_ms"],
        }
    )
    rows += [
        {
            "target": f"shipped accuracy within 1 point of {s['reference']}",
            "measured": f"{ship['heldout_accuracy']:.4f} vs {ref['heldout_accuracy']:.4f} "
            f"({(ship['heldout_accuracy'] - ref['heldout_accuracy']) * 100:+.2f} points)",
            "met": abs(ship["heldout_accuracy"] - ref["heldout_accuracy"]) <= 0.01,
        },
        {
            "target": "shipped p50 at c=1 no slower than the naive FastAPI app's p50 at c=1",
            "measured": f"{ship['load']['1']['p50_ms']:.1f} ms vs {base['1']['p50_ms']:.1f} ms",
            "met": ship["load"]["1"]["p50_ms"] <= base["1"]["p50_ms"],
        },
    ]
    for name, side in served.items():
        raw = raw_parallel_best(results, name)
        got = side["load"]["64"]["throughput_rps"]
        batch = results["settings"]["shipped"]["batchSize"]
        at_batch = next(r for r in results["raw"][name]["parallel"]["results"] if r["batch_size"] == batch)
        rows.append(
            {
                "target": f"{name} served at c=64 >= 0.9 x its raw limit in the same layout "
                "(one single-threaded process per core)",
                "measured": f"{ratio(got, raw['sentences_per_s'])} (raw at batch {raw['batch_size']}; "
                f"{got / at_batch['sentences_per_s']:.2f} of raw at the served batch size, {batch})",
                "met": got >= 0.9 * raw["sentences_per_s"],
            }
        )
    rows.append(
        {
            "target": f"shipped served vs the naive FastAPI app at c={c} (not a target)",
            "measured": ratio(ship["load"][c]["throughput_rps"], base[c]["throughput_rps"]),
            "met": None,
        }
    )
    for name, check in results["wrk_check"].items():
        rows.append(
            {
                "target": f"bench's load generator and wrk agree within 10% on {name} at c={c}",
                "measured": f"{check['loadgen']['throughput_rps']:.1f} vs {check['wrk']['throughput_rps']:.1f} "
                f"req/s (ratio {check['ratio']:.2f})",
                "met": abs(check["ratio"] - 1) <= 0.10,
            }
        )
    if "soak" in results:
        soak = results["soak"]
        rows.append(
            {
                "target": f"soak ({soak['minutes']:g} min at c={soak['concurrency']}): worker memory growth "
                f"< {soak['growth_limit'] * 100:.0f}%, no errors",
                "measured": f"{soak['rss_growth'] * 100:+.1f}%, {soak['errors']} errors in {soak['requests']} "
                f"requests, {soak['worker_restarts']} worker restarts",
                "met": soak["rss_growth"] < soak["growth_limit"] and soak["errors"] == 0,
            }
        )
    return rows


def _load_row(name: str, r: dict) -> str:
    batch = f"{r['mean_batch_size']:.1f}" if r.get("mean_batch_size") else "-"
    cores = r.get("cores_used")
    cores = (
        (
            f"{cores.get('frontend', 0):.2f} / {cores.get('workers', 0):.2f} / {cores['load generator']:.2f} / "
            f"{cores.get('machine', float('nan')):.2f}"
        )
        if cores
        else "-"
    )
    return (
        f"| {name} | {r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
        f"{r['p99_ms']:.1f} | {r['errors']} | {batch} | {cores} |"
    )


LOAD_HEADER = (
    "| | requests/s | p50 ms | p90 ms | p99 ms | errors | mean batch | "
    "cores: server (frontend) / server (workers) / load generator / whole machine |\n"
    "|---|---|---|---|---|---|---|---|"
)


def _table(title_col: str, rows: dict) -> list[str]:
    return [LOAD_HEADER.replace("| |", f"| {title_col} |", 1)] + [_load_row(k, r) for k, r in rows.items()]


def markdown(results: dict) -> str:
    m = results["machine"]
    s = results["settings"]
    shipped = s["shipped"]
    c = str(s["target_concurrency"])
    out = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench.run`); every figure below comes from one run, "
        "and nowhere else in the repo: other pages link here.",
        "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, {m['memory_gib']} GiB, {m['os']}; "
        f"Python {m['python']}, torch {m['torch']}, ONNX Runtime {m['onnxruntime']}, transformers "
        f"{m['transformers']}, TorchServe {m['torchserve']}, LitServe {m['litserve']}; {m['date']}. The load "
        "generator runs on the same cores as the servers, so read ratios, not absolute numbers.",
        "",
        f"Load: closed loop, {s['texts']}; {s['duration_s']:.0f} s measured after "
        f"{s['warmup_s']:.0f} s warm-up per point. Shipped: {s['shipped_variant']}, batch size "
        f"{shipped['batchSize']}, max batch delay {shipped['maxBatchDelay']} ms, {shipped['maxWorkers']} "
        f"worker(s) x {s['shipped_handler']['torch_threads']} thread(s). Run took "
        f"{results['elapsed_s'] / 60:.1f} min.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for row in targets(results):
        met = "-" if row["met"] is None else "yes" if row["met"] else "**no**"
        out.append(f"| {row['target']} | {row['measured']} | {met} |")

    out += [
        "",
        "![systems against concurrency](concurrency.png)",
        "",
        f"## Systems at concurrency {c}",
        "",
        LOAD_HEADER.replace("| |", "| system |", 1),
    ]
    systems = {f"TorchServe, {name}": side["load"][c] for name, side in results["served"].items()}
    systems["TorchServe floor (no model)"] = results["floor"][c]
    systems[f"LitServe, PyTorch fp32 ({results['litserve']['best']})"] = results["litserve"]["load"][c]
    systems[f"LitServe, the shipped int8 graph ({results['litserve_int8']['best']})"] = results["litserve_int8"][
        "load"
    ][c]
    systems["naive FastAPI"] = results["baseline"][c]
    out += [_load_row(k, r) for k, r in systems.items()]

    out += [
        "",
        "## Backends and precision, served side by side",
        "",
        "| variant | archive MiB | worker RSS MiB (all workers) | held-out accuracy | label agreement with "
        f"{s['reference']} | c=1 p50 ms | c={c} requests/s | c=64 requests/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, side in results["served"].items():
        load = side["load"]
        out.append(
            f"| {name} | {side['archive_mib']} | {side['worker_rss_mib']:.0f} | {side['heldout_accuracy']:.4f} "
            f"| {side['label_agreement']:.4f} | {load['1']['p50_ms']:.1f} | {load[c]['throughput_rps']:.1f} | "
            f"{load['64']['throughput_rps']:.1f} |"
        )
    for name, side in results["served"].items():
        out += ["", f"**{name}** (version {side['version']})", ""] + _table("concurrency", side["load"])

    out += [
        "",
        "## Raw limit: each model in-process, no server",
        "",
        "*plain*: the batch padded to its longest text, one forward pass; *micro*: what the handler does, "
        "length-sorted forward passes of at most the variant's micro-batch size (in brackets) of texts; "
        "*per core*: one single-threaded process per core, micro-batched, their throughputs added. "
        "Sentences/s (batch p50 ms).",
        "",
        "| variant | batch | plain | micro | per core |",
        "|---|---|---|---|---|",
    ]
    for name, raw in results["raw"].items():
        for i, row in enumerate(raw["results"]["plain"]):
            cells = [raw["results"]["plain"][i], raw["results"]["micro"][i], raw["parallel"]["results"][i]]
            out.append(
                f"| {name} ({raw['micro_batch_size']}) | {row['batch_size']} | "
                + " | ".join(f"{r['sentences_per_s']:.1f} ({r['batch_p50_ms']:.1f})" for r in cells)
                + " |"
            )

    out += [
        "",
        "## TorchServe's floor: the shipped handler with no model",
        "",
        "The same parsing, tokenizing, metrics and answers, the forward pass replaced by a constant: what "
        "TorchServe and the handler cost by themselves.",
        "",
    ] + _table("concurrency", results["floor"])

    if "handler_cost" in results:
        out += [
            "",
            "## Handler cost per request, by change",
            "",
            "What a worker does per request but the forward pass (bench/handler_cost.py): the handler of "
            "each git revision loaded in-process through TorchServe's own model loader, metrics cache and "
            "`Service.predict`, the model replaced by a constant; CPU microseconds per request and metric "
            "lines written per request, batches of 1 and 16 held-out tweets, median of 3 alternating rounds.",
            "",
            "| change | revision | batch 1: CPU µs/request | metric lines | batch 16: CPU µs/request | metric lines |",
            "|---|---|---|---|---|---|",
        ]
        for label, row in results["handler_cost"].items():
            out.append(
                f"| {label} | {row['revision']} | {row['1']['cpu_us_per_request']:.0f} | "
                f"{row['1']['metric_lines_per_request']:.2f} | {row['16']['cpu_us_per_request']:.0f} | "
                f"{row['16']['metric_lines_per_request']:.2f} |"
            )

    out += ["", f"## Workers x threads per worker ({s['shipped_variant']})", "", LOAD_HEADER]
    out += [_load_row(f"{k}, c={cc[1:]}", r) for k, rs in results["workers_sweep"].items() for cc, r in rs.items()]

    out += [
        "",
        f"## LitServe on PyTorch fp32: its batching at c={c}",
        "",
        *_table("setting", {k: v[c] for k, v in results["litserve"]["sweep"].items()}),
        "",
        f"**best: {results['litserve']['best']}**",
        "",
        *_table("concurrency", results["litserve"]["load"]),
    ]

    out += [
        "",
        f"## LitServe on the shipped int8 ONNX graph (the handler's backend code): its batching at c={c}",
        "",
        *_table("setting", {k: v[c] for k, v in results["litserve_int8"]["sweep"].items()}),
        "",
        f"**best: {results['litserve_int8']['best']}**",
        "",
        *_table("concurrency", results["litserve_int8"]["load"]),
    ]

    out += [
        "",
        "## Naive baseline: FastAPI, model inline, no batching (PyTorch fp32)",
        "",
        *_table("concurrency", results["baseline"]),
    ]

    out += [
        "",
        f"## bench/loadgen.py against wrk at c={c}",
        "",
        "| system | loadgen requests/s | wrk requests/s | ratio | loadgen p50 ms | wrk p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, check in results["wrk_check"].items():
        out.append(
            f"| {name} | {check['loadgen']['throughput_rps']:.1f} | {check['wrk']['throughput_rps']:.1f} | "
            f"{check['ratio']:.2f} | {check['loadgen']['p50_ms']:.1f} | {check['wrk']['p50_ms']:.1f} |"
        )

    out += [
        "",
        f"## REST vs gRPC ({s['shipped_variant']}, same server, one after the other)",
        "",
        *_table("API", results["rest_vs_grpc"]),
    ]

    out += [
        "",
        f"## TorchServe batch size ({s['shipped_variant']}, concurrency {s['batch_sweep_concurrency']}, "
        f"delay {shipped['maxBatchDelay']} ms)",
        "",
        "![latency and throughput against batch size](batch_size_tradeoff.png)",
        "",
        *_table("batch size", results["batch_sweep"]),
    ]

    dc = s["delay_sweep_concurrency"]
    out += [
        "",
        f"## Max batch delay ({s['shipped_variant']}, batch {shipped['batchSize']}, concurrency 1 and {dc})",
        "",
        f"| delay ms | c=1 p50 ms | c={dc} requests/s | c={dc} p50 ms | c={dc} p99 ms | c={dc} mean batch |",
        "|---|---|---|---|---|---|",
    ]
    for d, r in results["delay_sweep"].items():
        loaded = r[f"c{dc}"]
        out.append(
            f"| {d} | {r['c1']['p50_ms']:.1f} | {loaded['throughput_rps']:.1f} | {loaded['p50_ms']:.1f} | "
            f"{loaded['p99_ms']:.1f} | {loaded['mean_batch_size']:.1f} |"
        )

    if "soak" in results:
        soak = results["soak"]
        before, after = soak["rss_before_mib"], soak["rss_after_mib"]
        out += [
            "",
            f"## Soak: {soak['minutes']:g} min at concurrency {soak['concurrency']}, as shipped",
            "",
            f"{soak['requests']} requests ({soak['requests_per_s']} req/s), one in ten malformed on "
            f"purpose; status counts {soak['status_counts']}; errors (neither 200 nor the expected "
            f"400): {soak['errors']}; worker restarts: {soak['worker_restarts']}.",
            "",
            "| worker pid | RSS after warm-up MiB | RSS after soak MiB |",
            "|---|---|---|",
        ]
        out += [f"| {pid} | {before[pid]:.0f} | {after.get(pid, float('nan')):.0f} |" for pid in before]
        out += ["", f"Total growth: {soak['rss_growth'] * 100:+.2f}%."]
    out.append("")
    return "\n".join(out)


def charts(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["settings"]
    shipped = s["shipped_variant"]
    sweep = results["batch_sweep"]
    sizes = [int(b) for b in sweep]
    # the limit the server is compared with: one single-threaded process per core (the
    # server's own layout); one process using every core beside it, for contrast
    parallel = results["raw"][shipped]["parallel"]
    limit = {r["batch_size"]: r for r in parallel["results"]}
    one = {r["batch_size"]: r for r in results["raw"][shipped]["results"]["micro"]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(
        sizes,
        [sweep[str(b)]["throughput_rps"] for b in sizes],
        "o-",
        label=f"TorchServe, concurrency {s['batch_sweep_concurrency']}",
    )
    left.plot(
        [b for b in sizes if b in limit],
        [limit[b]["sentences_per_s"] for b in sizes if b in limit],
        "s--",
        label=f"raw limit: {parallel['processes']} processes x {parallel['threads']} thread",
    )
    left.plot(
        [b for b in sizes if b in one],
        [one[b]["sentences_per_s"] for b in sizes if b in one],
        "x:",
        color="grey",
        label="raw: one process, every core",
    )
    left.set(xlabel="batch size", ylabel="sentences / s", title="Throughput", xscale="log", xticks=sizes)
    left.set_xticklabels(sizes)
    left.set_ylim(bottom=0)
    left.legend()
    for key, style in (("p50_ms", "o-"), ("p99_ms", "^-")):
        right.plot(sizes, [sweep[str(b)][key] for b in sizes], style, label=f"TorchServe {key[:3]}")
    right.plot(
        [b for b in sizes if b in limit],
        [limit[b]["batch_p50_ms"] for b in sizes if b in limit],
        "s--",
        label="raw limit batch p50",
    )
    right.set(xlabel="batch size", ylabel="ms", title="Latency per request", xscale="log", xticks=sizes)
    right.set_xticklabels(sizes)
    right.set_ylim(bottom=0)
    right.legend()
    fig.suptitle(
        f"{shipped} MiniLM sentiment on {results['machine']['usable_cores']} cores: the batch size trade-off (measured)"
    )
    fig.tight_layout()
    fig.savefig(out / "batch_size_tradeoff.png", dpi=110)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = {f"TorchServe {name}": side["load"] for name, side in results["served"].items()}
    series["LitServe, PyTorch fp32 (best)"] = results["litserve"]["load"]
    series["LitServe, int8 graph (best)"] = results["litserve_int8"]["load"]
    series["naive FastAPI"] = results["baseline"]
    for name, load in series.items():
        cs = [int(k) for k in load]
        left.plot(cs, [load[str(k)]["throughput_rps"] for k in cs], "o-", label=name)
        right.plot(cs, [load[str(k)]["p99_ms"] for k in cs], "o-", label=name)
    left.set(xlabel="concurrent clients", ylabel="requests / s", title="Throughput", xscale="log")
    right.set(xlabel="concurrent clients", ylabel="ms", title="p99 latency", xscale="log", yscale="log")
    for ax in (left, right):
        ax.set_xticks(s["concurrencies"])
        ax.set_xticklabels([str(k) for k in s["concurrencies"]])
        ax.legend(fontsize=7)
    left.set_ylim(bottom=0)
    fig.suptitle("Every system under closed-loop load, one machine, one run (measured)")
    fig.tight_layout()
    fig.savefig(out / "concurrency.png", dpi=110)
    plt.close(fig)


def gateway_refusals(run: dict) -> str:
    """The refusals' p50 / p99 as the gateway timed them, where the run went through it."""
    if not run.get("gateway_refusals"):
        return "-"
    return f"{run['gateway_refusal_p50_ms']:.1f} / {run['gateway_refusal_p99_ms']:.1f}"


def key_spread(run: dict) -> float:
    """How far the key furthest from an even share of the run's goodput is from it, as a
    share of it (0: every key got the same)."""
    per_key = run.get("goodput_per_key_rps") or [run["goodput_rps"]]
    even = sum(per_key) / len(per_key)
    return max(abs(g - even) for g in per_key) / even if even else 0.0


def cores_used(run: dict) -> str:
    """The cores the gateway (its process and nginx) and TorchServe (frontend and workers)
    used over an overload run and its recovery."""
    cores = run.get("cores_used")
    return "-" if cores is None else f"{cores['gateway']:.2f} / {cores['TorchServe']:.2f}"


def overload_section(overload: dict) -> list[str]:
    """The open-loop overload runs (bench/overload.py's overload.json), with their targets."""
    cap = overload["capacity"]
    out = [
        "",
        "## Overload: open-loop arrivals past the capacity (bench/overload.py)",
        "",
        f"Capacity: {cap['throughput_rps']:.1f} requests/s (closed loop, c=16, straight to TorchServe, p50 "
        f"{cap['p50_ms']:.1f} ms); goodput counts 2xx answers within {overload['deadline_ms']:.0f} ms (4 x that "
        f"p50). {overload['seconds']:.0f} s per rate, a new connection per request, then half the capacity for "
        "6 s; recovery: seconds until the 2xx p50 over half-second windows is within 1.5x the unloaded p50. "
        f"The gateway's in-flight cap per node: {overload.get('in_flight_per_node', 48)}. Pinned: "
        f"{overload.get('pinned', 'no')}. Key spread: each key's goodput against an even share of the total "
        "(worst key's distance from it, as a share of it). A generator whose schedule lag p99 is over 10 ms "
        "cannot tell what the server did: such a row says so.",
        "",
        "![goodput and p99 against offered load](overload.png)",
        "",
        "Refusal times are taken twice: by the client (from opening the connection to the answer read, with "
        "the generator's own delays in it) and, through the gateway, by nginx ($request_time in its access log). "
        "Cores: CPU seconds over the run (overload and recovery) per second, of the gateway's process and its "
        "nginx, and of TorchServe's frontend and workers; pinned, they share one core, and the capacity was "
        "measured with TorchServe alone on it: what the gateway takes of the core is not TorchServe's, so "
        "goodput is also given per core TorchServe was left (in a pod the gateway has CPU of its own).",
        "",
        "| way in | offered /s | statuses | goodput /s (of capacity) | 2xx p50 / p99 ms | refusals p50 / p99 ms "
        "(client) | refusals p50 / p99 ms (gateway) | refusals without Retry-After | generator lag p99 ms "
        "| recovery s | worker restarts | key spread | cores: gateway / TorchServe |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for way, runs in overload["runs"].items():
        for r in runs:
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
            lag = f"{r['schedule_lag_p99_ms']:.1f}" + ("" if r.get("on_schedule", True) else " (cannot tell)")
            out.append(
                f"| {way} | {r['offered_rps']:.0f} ({r['multiple']}x) | {statuses} | {r['goodput_rps']:.1f} "
                f"({r['goodput_rps'] / cap['throughput_rps']:.2f}) | {r['ok_p50_ms']:.1f} / {r['ok_p99_ms']:.1f} | "
                f"{r['refused_p50_ms']:.1f} / {r['refused_p99_ms']:.1f} | {gateway_refusals(r)} | "
                f"{r['refused_without_retry_after']} | "
                f"{lag} | {r['recovery_s']} | {'yes' if r['worker_restarts'] else 'no'} | {key_spread(r):.2f} | "
                f"{cores_used(r)} |"
            )
    out += ["", "| target (through the gateway, every overload) | measured | met |", "|---|---|---|"]
    gateway = [
        r for way, runs in overload["runs"].items() if way.startswith("gateway") for r in runs if r["multiple"] > 1
    ]
    at = {m: [r for r in gateway if r["multiple"] == m] for m in sorted({r["multiple"] for r in gateway})}
    checks = (
        *(
            (
                f"goodput >= {bar} x capacity at {m}x, every key count",
                min(r["goodput_rps"] / cap["throughput_rps"] for r in runs),
                bar,
                ">=",
            )
            for m, runs in at.items()
            for bar in [0.9 if m <= 1.5 else 0.8]
        ),
        *(
            (
                f"goodput >= {bar} x capacity at {m}x per core TorchServe was left (the gateway shares the core)",
                min(r["goodput_rps"] / r["cores_used"]["TorchServe"] / cap["throughput_rps"] for r in runs),
                bar,
                ">=",
            )
            for m, runs in at.items()
            if all("cores_used" in r for r in runs)
            for bar in [0.9 if m <= 1.5 else 0.8]
        ),
        ("each key within 25% of an even share of the goodput", max(key_spread(r) for r in gateway), 0.25, "<="),
        (
            "generator on schedule (lag p99 under 10 ms)",
            max(r["schedule_lag_p99_ms"] for r in gateway),
            10,
            "<",
        ),
        *(
            [("refusals answered in under 10 ms (p99, as the gateway timed them)", max(own), 10, "<")]
            if (own := [r["gateway_refusal_p99_ms"] for r in gateway if r.get("gateway_refusals")])
            else []
        ),
        (
            "refusals answered in under 10 ms (p99, as the client timed them)",
            max(r["refused_p99_ms"] for r in gateway),
            10,
            "<",
        ),
        (
            "p50 back to normal within 2 s",
            max(r["recovery_s"] if r["recovery_s"] is not None else 99 for r in gateway),
            2,
            "<=",
        ),
        ("refusals without Retry-After", sum(r["refused_without_retry_after"] for r in gateway), 0, "<="),
        ("worker restarts", sum(r["worker_restarts"] for r in gateway), 0, "<="),
    )
    for name, value, bar, op in checks:
        met = value >= bar if op == ">=" else value < bar if op == "<" else value <= bar
        out.append(f"| {name} | {value:.3g} (worst) | {'yes' if met else 'no'} |")
    return out


def cap_sweep_section(sweep: dict) -> list[str]:
    """The gateway's in-flight cap per node, swept (bench/results/overload_cap_sweep.json):
    what chose the shipped one."""
    out = [
        "",
        "### The in-flight cap per node, swept",
        "",
        f"`{sweep['command']}`, one run per cap, each with its own capacity and deadline; goodput as a share "
        "of that capacity. The shipped cap is 24 with a key's share at three quarters (18), from this table: "
        "16 leaves the workers short, 32 and 48 admit more than is answered within the deadline once many "
        "keys share the node, and a lone key does as well at 16-24 in flight as at 24.",
        "",
        "| cap | key share (in flight) | capacity /s | 1 key 1.5x | 1 key 3x | 16 keys 1.5x | 16 keys 3x "
        "| 16 keys 3x p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ways = [("gateway, 1 key", 1.5), ("gateway, 1 key", 3.0), ("gateway, 16 keys", 1.5), ("gateway, 16 keys", 3.0)]
    for cap, run in sweep["runs"].items():
        capacity = run["capacity"]["throughput_rps"]
        by = {(way, r["multiple"]): r for way, runs in run["runs"].items() for r in runs}
        shares = [f"{by[w]['goodput_rps'] / capacity:.2f}" if w in by else "-" for w in ways]
        p99 = by.get(ways[-1])
        out.append(
            f"| {cap} | {int(cap) // 2} | {capacity:.1f} | {' | '.join(shares)} | {p99['ok_p99_ms'] if p99 else '-'} |"
        )
    return out


def layouts_section(layouts: dict) -> list[str]:
    """Workers, batch size and delay of the shipped archive against the raw limit (bench/layouts.py)."""
    raw = layouts["raw_per_core"]
    shipped = layouts["settings"]["shipped"]
    out = [
        "",
        "## Workers, batch size and delay at moderate load (bench/layouts.py)",
        "",
        f"The shipped archive ({layouts['settings']['variant']}, {layouts['settings']['threads_per_worker']} thread "
        f"per worker) alone in a TorchServe, closed-loop clients, {layouts['settings']['duration_s']:.0f} s measured "
        f"per point; run on {layouts['machine']['date']}. Raw limit: {raw['texts_per_s']:.1f} texts/s, one "
        f"single-threaded process per core running the backend in a loop (batch {raw['batch_size']}). Shipped then: "
        f"{shipped['maxWorkers']} workers, batch {shipped['batchSize']}, {shipped['maxBatchDelay']} ms.",
        "",
        "| setting | c=16 requests/s (of raw) | c=16 p50 / p99 ms (p99/p50) | c=16 mean batch "
        "| c=16 cores: frontend / workers / machine | c=64 requests/s (of raw) | c=64 p99/p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, point in layouts["points"].items():
        a, b = point["load"]["16"], point["load"]["64"]
        cores = a["cores_used"]
        out.append(
            f"| {name} | {a['throughput_rps']:.1f} ({a['of_raw']:.2f}) | {a['p50_ms']:.1f} / {a['p99_ms']:.1f} "
            f"({a['p99_over_p50']}) | {a['mean_batch_size']:.1f} | {cores['frontend']:.2f} / {cores['workers']:.2f} / "
            f"{cores['machine']:.2f} | {b['throughput_rps']:.1f} ({b['of_raw']:.2f}) | {b['p99_over_p50']} |"
        )
    best16 = max(layouts["points"].values(), key=lambda p: p["load"]["16"]["of_raw"])["load"]["16"]
    best64 = max(layouts["points"].values(), key=lambda p: p["load"]["64"]["of_raw"])["load"]["64"]
    fair16 = [p["load"]["16"] for p in layouts["points"].values() if p["load"]["16"]["p99_over_p50"] <= 2]
    out += [
        "",
        "| target (issue 23) | best measured | met |",
        "|---|---|---|",
        f"| c=16: >= 0.85 of raw with p99 <= 2 x p50 | {max((p['of_raw'] for p in fair16), default=0):.2f} "
        f"(best ratio at any p99: {best16['of_raw']:.2f}) | "
        f"{'yes' if any(p['of_raw'] >= 0.85 for p in fair16) else '**no**'} |",
        f"| c=64: >= 0.95 of raw | {best64['of_raw']:.2f} | {'yes' if best64['of_raw'] >= 0.95 else '**no**'} |",
    ]
    return out


def tail_section(tail: dict) -> list[str]:
    """What the slowest requests at 16 clients spend their time on (bench/tail.py)."""
    unlogged = tail["shipped_unlogged"]
    out = [
        "",
        "## The tail at 16 clients: queue wait or service (bench/tail.py)",
        "",
        f"The shipped archive alone in a TorchServe, {tail['settings']['concurrency']} closed-loop clients, "
        f"{tail['settings']['duration_s']:.0f} s measured per setting, TorchServe's metrics logged: per request "
        "its latency and queue wait in the frontend (service: the rest), per batch its size and time in the "
        f"worker; run on {tail['machine']['date']}. Logging them, the shipped setting served "
        f"{next(iter(tail['points'].values()))['clients']['throughput_rps']:.1f} requests/s against "
        f"{unlogged['throughput_rps']:.1f} with its metrics served as shipped (p99 {unlogged['p99_ms']:.1f} ms).",
        "",
        "| setting | clients req/s | clients p50 / p99 ms | queue wait p50 / p99 ms | service p50 / p99 ms "
        "| slowest 1%: queue + service ms | middle: queue + service ms | batch sizes (mean) "
        "| batch ms p50 / p99 | commonest size's batch ms p50 / p99 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in tail["points"].items():
        c, q, sv, b, cb = (
            p["clients"],
            p["queue_wait_ms"],
            p["service_ms"],
            p["batch_time_ms"],
            p["commonest_size_time_ms"],
        )
        slow, mid = p["slowest_1pct"], p["middle"]
        sizes = [int(k) for k in p["batch_sizes"]]
        out.append(
            f"| {name} | {c['throughput_rps']:.1f} | {c['p50_ms']:.1f} / {c['p99_ms']:.1f} | {q['p50']} / {q['p99']} "
            f"| {sv['p50']} / {sv['p99']} | {slow['queue_wait_ms']} + {slow['service_ms']} "
            f"| {mid['queue_wait_ms']} + {mid['service_ms']} | {min(sizes)}-{max(sizes)} ({p['mean_batch_size']}) "
            f"| {b['p50']} / {b['p99']} | {p['commonest_size']}: {cb['p50']} / {cb['p99']} |"
        )
    return out


def worker_memory_section(memory: dict) -> list[str]:
    out = [
        "",
        "## A worker's memory, step by step (bench/worker_memory.py)",
        "",
        "Unique memory (USS) of one process doing what a worker does, after each step, the increase in "
        "brackets (measured with no other process mapping the same libraries: two workers of one server share "
        "the library pages, which the JSON's PSS figures split).",
        "",
        "| step | " + " | ".join(memory) + " |",
        "|---|" + "---|" * len(memory),
    ]
    names = [s["step"] for s in next(iter(memory.values()))]
    for i, step in enumerate(names):
        cells = []
        for steps in memory.values():
            grew = steps[i]["uss_mib"] - (steps[i - 1]["uss_mib"] if i else 0)
            cells.append(f"{steps[i]['uss_mib']:.0f} MiB ({grew:+.0f})")
        out.append(f"| {step} | " + " | ".join(cells) + " |")
    files = {n: s[3].get("model_files_mib", {}) for n, s in memory.items()}
    out += ["", "Model files in each archive (MiB): " + "; ".join(f"{n}: {f}" for n, f in files.items()) + "."]
    timed = [
        f"{n}, {s['step'].removeprefix('after one explanation ')}: {s['explain_ms']} ms, {s['heap_release_ms']} ms"
        for n, steps in memory.items()
        for s in steps
        if "heap_release_ms" in s
    ]
    if timed:
        out += [
            "",
            "Each explanation's time, and of it the freed heap given back at its end "
            "(explanations.release_freed_heap): " + "; ".join(timed) + ".",
        ]
    return out


def frontend_heap_section(heap: dict) -> list[str]:
    out = [
        "",
        "## The frontend's heap (bench/frontend_heap.py)",
        "",
        f"TorchServe's JVM with config.properties' `vmargs={heap['vmargs']}` (job queue {heap['job_queue_size']}), "
        f"{heap['seconds']:.0f} s of closed-loop load per case, each on a fresh server. Heap figures from the "
        "JVM's own GC log: the peak in use before a collection, the most left after one, the largest "
        "committed; RSS sampled every second. Status 0: no answer (the connection refused or closed).",
        "",
        "| case | way in | clients | text (chars) | answers | heap peak | left after GC (max) | committed (max) "
        "| RSS peak | out of heap | JVM exited |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in heap["cases"]:
        answers = ", ".join(f"{n} x {s}" for s, n in sorted(c["statuses"].items(), key=lambda kv: -kv[1]))
        exited = f"after {c['jvm_exited_after_s']} s" if c["jvm_exited_after_s"] is not None else "no"
        out.append(
            f"| {c['case']} | {c['way_in']} | {c['clients']} | {c['text_chars']:,} | {answers} | "
            f"{c['heap_peak_mib']} MiB | {c['heap_after_gc_max_mib']} MiB | {c['heap_committed_max_mib']} MiB | "
            f"{c['rss_peak_mib']:.0f} MiB | {'yes' if c['out_of_memory'] else 'no'} | {exited} |"
        )
    return out


def peers_section(peers: dict) -> list[str]:
    """This project against LitServe and mosec on the same graph, one run (bench/peers.py)."""
    systems, limit = peers["systems"], peers["per_core_limit"]["sentences_per_s"]
    m, seconds = peers["machine"], peers["settings"]["seconds"]
    ours = systems["this project"]["load"]
    others = {name: s for name, s in systems.items() if name != "this project"}
    out = [
        "",
        "## The peers on the same int8 graph (bench/peers.py)",
        "",
        f"One run on {m['date']}: TorchServe {m['torchserve']} as shipped (straight to port 8080), LitServe "
        f"{m['litserve']} and mosec {m['mosec']}, each running the shipped graph through the handler's own backend "
        "code; wrk, one thread, keep-alive, "
        + ", ".join(f"{v:.0f} s at c={c}" for c, v in seconds.items())
        + f", after {peers['settings']['warmup_seconds']:.0f} s of warm-up. Each peer's batching swept at "
        f"c={peers['settings']['sweep_concurrency']} ({peers['settings']['sweep_seconds']:.0f} s a setting), "
        f"then its best at every concurrency. Per-core limit: {limit:.1f} texts/s, the graph in "
        f"{peers['per_core_limit']['processes']} single-threaded processes in a loop. Nothing pinned: the load "
        "generator shares the cores.",
        "",
        "| system (setting) | c=1 p50 ms | c=16 req/s (of limit) | c=16 p50 / p99 ms (p99/p50) "
        "| c=64 req/s (of limit) | c=64 p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in systems.items():
        one, mid, high = (s["load"][c] for c in ("1", "16", "64"))
        errors = sum(p["errors"] for p in s["load"].values())
        out.append(
            f"| {name} ({s['best']}) | {one['p50_ms']:.1f} | {mid['throughput_rps']:.1f} "
            f"({mid['throughput_rps'] / limit:.2f}) | {mid['p50_ms']:.1f} / {mid['p99_ms']:.1f} "
            f"({mid['p99_ms'] / mid['p50_ms']:.2f}) | {high['throughput_rps']:.1f} "
            f"({high['throughput_rps'] / limit:.2f}) | {high['p99_ms']:.1f} | {errors} |"
        )
    out += ["", "| against the best peer at each load | this project | best peer | ratio |", "|---|---|---|---|"]
    best1 = min(others, key=lambda n: others[n]["load"]["1"]["p50_ms"])
    theirs1 = others[best1]["load"]["1"]["p50_ms"]
    out.append(
        f"| c=1 p50 (lower is better) | {ours['1']['p50_ms']:.1f} ms | {best1}: {theirs1:.1f} ms "
        f"| {theirs1 / ours['1']['p50_ms']:.2f} x faster |"
    )
    sweep_c = str(peers["settings"]["sweep_concurrency"])
    for c in ("16", "64"):
        # at the sweep's concurrency a peer's best figure may be one of its sweep's: it counts
        measured = {}
        for n, o in others.items():
            sweep = [pt["throughput_rps"] for pt in o["sweep"].values()] if c == sweep_c else []
            measured[n] = max([o["load"][c]["throughput_rps"], *sweep])
        best = max(measured, key=measured.__getitem__)
        out.append(
            f"| c={c} requests/s (a peer's best run{', its sweep included' if c == sweep_c else ''}) "
            f"| {ours[c]['throughput_rps']:.1f} | {best}: {measured[best]:.1f} "
            f"| {ours[c]['throughput_rps'] / measured[best]:.2f} |"
        )
    unsteady = [
        f"{n}'s {o['best']} measured {o['sweep'][o['best']]['throughput_rps']:.1f} requests/s at c={sweep_c} in its "
        f"sweep and {o['load'][sweep_c]['throughput_rps']:.1f} in its own run"
        for n, o in others.items()
        if abs(o["load"][sweep_c]["throughput_rps"] / o["sweep"][o["best"]]["throughput_rps"] - 1) > 0.2
    ]
    if unsteady:
        out += ["", "Not steady from one start to the next here: " + "; ".join(unsteady) + "."]
    out += ["", "Each peer's batching at c=16:", "", "| peer | setting | requests/s | p50 ms | p99 ms |"]
    out.append("|---|---|---|---|---|")
    for name, s in others.items():
        for setting, pt in s["sweep"].items():
            out.append(f"| {name} | {setting} | {pt['throughput_rps']:.1f} | {pt['p50_ms']:.1f} | {pt['p99_ms']:.1f} |")
    return out


def write_report(results: dict, out: Path) -> None:
    """README.md from results.json, with the sections of the other benchmarks' files that are there."""
    charts(results, out)
    text = markdown(results)
    extra: list[str] = []
    if (out / "peers.json").is_file():
        extra += peers_section(json.loads((out / "peers.json").read_text()))
    if (out / "overload.json").is_file():
        extra += overload_section(json.loads((out / "overload.json").read_text()))
    if (out / "overload_cap_sweep.json").is_file():
        extra += cap_sweep_section(json.loads((out / "overload_cap_sweep.json").read_text()))
    if (out / "layouts.json").is_file():
        extra += layouts_section(json.loads((out / "layouts.json").read_text()))
    if (out / "tail.json").is_file():
        extra += tail_section(json.loads((out / "tail.json").read_text()))
    if (out / "worker_memory.json").is_file():
        extra += worker_memory_section(json.loads((out / "worker_memory.json").read_text()))
    if (out / "frontend_heap.json").is_file():
        extra += frontend_heap_section(json.loads((out / "frontend_heap.json").read_text()))
    (out / "README.md").write_text(text + "\n".join(extra) + ("\n" if extra else ""))


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results"
    write_report(json.loads((folder / "results.json").read_text()), folder)
