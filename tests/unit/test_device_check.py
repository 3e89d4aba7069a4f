"""bench/device_check.py on the CPU: its reading of config.properties, and whole runs on the
tiny model (--quick) whose results file is checked for shape, positive figures and ratios
computed from their own figures; with TorchServe's `ts` and without it. No timing
thresholds: figures on a shared CPU say nothing about a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.device_check import shipped_serving
from common.paths import CONFIG, ROOT
from common.torchserve_files import read_properties

pytestmark = pytest.mark.timeout(400)

TEXTS = ["I love this", "terrible service, never again", "meh", "what a game last night " * 3, "ok"] * 8
POINT_KEYS = {"batch_size", "texts_per_s", "batch_p50_ms", "batch_p99_ms", "batches", "seconds"}


def write_config(path, workers, batch_size, number_of_gpu=1):
    models = {"sentiment": {"1.0": {"defaultVersion": True, "minWorkers": workers, "maxWorkers": workers + 1}}}
    if batch_size is not None:
        models["sentiment"]["1.0"].update(batchSize=batch_size, maxBatchDelay=5)
    path.write_text(
        f"# a comment\nnumber_of_gpu={number_of_gpu}\ndefault_workers_per_model=7\nmodels={json.dumps(models)}\n"
    )
    return path


def test_config_gives_gpus_workers_and_batch_size(tmp_path):
    serving = shipped_serving(write_config(tmp_path / "config.properties", workers=3, batch_size=8, number_of_gpu=2))
    assert serving["number_of_gpu"] == 2
    assert serving["workers"] == 3
    assert serving["max_workers"] == 4
    assert serving["batch_size"] == 8
    assert serving["max_batch_delay_ms"] == 5


def test_config_without_models_entry_takes_torchserve_defaults(tmp_path):
    path = tmp_path / "config.properties"
    path.write_text("default_workers_per_model=3\n")
    serving = shipped_serving(path)
    assert (serving["number_of_gpu"], serving["workers"], serving["batch_size"]) == (0, 3, 1)
    assert serving["max_batch_delay_ms"] == 100


def test_shipped_config_is_read_as_its_models_entry():
    entry = json.loads(read_properties(CONFIG)["models"])["sentiment"]["1.0"]
    serving = shipped_serving(CONFIG)
    assert serving["workers"] == entry["minWorkers"]
    assert serving["batch_size"] == entry["batchSize"]
    assert serving["number_of_gpu"] == int(read_properties(CONFIG)["number_of_gpu"])


def run_check(tmp_path, model_dir, config, *extra, env=None):
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(TEXTS))
    out = tmp_path / "device_check.json"
    args = [sys.executable, "-m", "bench.device_check", "--quick", "--device", "cpu", "--budget-s", "300"]
    args += ["--model", str(model_dir), "--texts", str(texts), "--config", str(config), "--out", str(out), *extra]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=360, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "texts/s" in done.stdout  # the table
    return json.loads(out.read_text())


def check_point(point, batch_sizes):
    assert POINT_KEYS <= set(point)
    assert point["batch_size"] in batch_sizes
    assert point["texts_per_s"] > 0
    assert point["batches"] >= 1
    assert 0 < point["batch_p50_ms"] <= point["batch_p99_ms"]


def test_quick_run_on_the_cpu_measures_raw_handler_and_workers(tmp_path, tiny_model_dir):
    config = write_config(tmp_path / "config.properties", workers=2, batch_size=4)
    report = run_check(tmp_path, tiny_model_dir, config)

    assert report["device"]["kind"] == "cpu"
    assert report["serving"]["workers"] == 2 and report["serving"]["batch_size"] == 4
    assert report["settings"]["batch_sizes"] == [1, 4]
    assert report["settings"]["worker_counts"] == [1, 2]
    assert report["model"]["source"] == f"the checkpoint in {tiny_model_dir}"
    assert report["model"]["random_weights"] is False
    assert report["texts"]["count"] == len(TEXTS)
    assert report["handler"] == "measured with TorchServe's Context"
    assert [v["name"] for v in report["variants"]] == ["torch-fp32", "onnxruntime-cpu-fp32"]
    assert report["elapsed_s"] <= report["budget_s"]

    for variant in report["variants"]:
        assert "error" not in variant and "handler_not_measured" not in variant, variant
        assert variant["load_s"] > 0
        assert [p["batch_size"] for p in variant["raw"]] == [1, 4]
        assert [p["batch_size"] for p in variant["handler"]] == [1, 4]
        for point in variant["raw"] + variant["handler"]:
            check_point(point, [1, 4])
        raw = {p["batch_size"]: p for p in variant["raw"]}
        handler = {(p["batch_size"], p["micro_batch_size"]): p for p in variant["handler"]}
        assert len(variant["ratios"]) == len(variant["handler"])
        for ratio in variant["ratios"]:
            own = handler[(ratio["batch_size"], ratio["micro_batch_size"])]
            assert ratio["handler_texts_per_s"] == own["texts_per_s"]
            assert ratio["raw_texts_per_s"] == raw[ratio["batch_size"]]["texts_per_s"]
            assert ratio["handler_over_raw"] == pytest.approx(
                own["texts_per_s"] / raw[ratio["batch_size"]]["texts_per_s"]
            )
    assert report["variants"][1]["ort_session_providers"] == ["CPUExecutionProvider"]

    workers = report["variants"][0]["workers"]
    assert [w["workers"] for w in workers] == [1, 2]
    for w in workers:
        assert w["path"] == "handler" and w["batch_size"] == 4
        assert len(w["per_worker_texts_per_s"]) == w["workers"]
        assert all(x > 0 for x in w["per_worker_texts_per_s"])
        assert w["texts_per_s"] == pytest.approx(sum(w["per_worker_texts_per_s"]))
    # --quick measures workers for the first variant only, and says so
    assert report["variants"][1]["workers"] == []
    assert {"what": "onnxruntime-cpu-fp32: workers", "reason": "--quick: first variant only"} in report["skipped"]


def test_without_torchserve_the_backends_are_still_measured(tmp_path, tiny_model_dir):
    """The GPU machine may have no `ts`: the handler is recorded as not measured, the raw
    loop and the workers (raw) still are."""
    shim = tmp_path / "shim" / "ts"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('ts hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim.parent), os.environ.get("PYTHONPATH", "")])}
    config = write_config(tmp_path / "config.properties", workers=1, batch_size=None)
    report = run_check(tmp_path, tiny_model_dir, config, "--duration", "0.3", env=env)

    assert "ts hidden by the test" in report["handler"]
    assert report["settings"]["batch_sizes"] == [1]
    for variant in report["variants"]:
        assert "ts hidden by the test" in variant["handler_not_measured"]
        assert variant["handler"] == [] and variant["ratios"] == []
        for point in variant["raw"]:
            check_point(point, [1])
    workers = report["variants"][0]["workers"]
    assert [w["workers"] for w in workers] == [1]
    assert workers[0]["path"] == "raw" and workers[0]["texts_per_s"] > 0
