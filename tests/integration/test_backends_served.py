"""Both backends served by a real TorchServe: the tiny model archived for PyTorch, for
ONNX Runtime in fp32 and in int8 (archive.sh exports the graphs), side by side in one
server; the same texts get the same labels and close scores from each."""

from __future__ import annotations

import json

import pytest
import requests

from helpers import tiny_archive
from testbed.local_server import LocalTorchServe

VARIANTS = {"torch": [], "ort": ["backend=onnxruntime"], "ort-int8": ["backend=onnxruntime", "quantize=int8"]}
TEXTS = ["I love it", "terrible service, never again", "meh", "a long one " * 30]


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backends")
    store = tmp / "store"
    store.mkdir()
    for name, options in VARIANTS.items():
        tiny_archive(tiny_model_dir, store / f"{name}.mar", name, options)
    entry = {"defaultVersion": True, "minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 5}
    models = {name: {"1.0": dict(entry, marName=f"{name}.mar")} for name in VARIANTS}
    ts = LocalTorchServe(
        model_store=store,
        workdir=tmp / "ts",
        overrides={"load_models": ",".join(f"{n}.mar" for n in VARIANTS), "models": json.dumps(models)},
    )
    ts.start()
    yield ts
    ts.stop()


def predict(server, model):
    r = requests.post(
        server.url("inference", f"/predictions/{model}"),
        json={"text": TEXTS},
        headers={"Authorization": f"Bearer {server.keys['inference']}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_each_backend_answers_as_pytorch(served):
    reference = predict(served, "torch")
    for model, tolerance in (("ort", 1e-4), ("ort-int8", 0.15)):
        for r, g in zip(reference, predict(served, model), strict=True):
            assert g["scores"]["positive"] == pytest.approx(r["scores"]["positive"], abs=tolerance), model
            if model == "ort":
                assert g["label"] == r["label"]


def test_bad_input_fails_alone_with_onnxruntime_too(served):
    headers = {"Authorization": f"Bearer {served.keys['inference']}", "Content-Type": "application/json"}
    bad = requests.post(
        served.url("inference", "/predictions/ort-int8"), data=b'{"text": "\\ud800"}', headers=headers, timeout=60
    )
    assert bad.status_code == 400 and bad.json()["type"] == "InvalidInput"
    assert len(predict(served, "ort-int8")) == len(TEXTS)
