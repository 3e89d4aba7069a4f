"""Model lifecycle through the management API, driven by clients/manage.py, on a real server.

The server starts with the shipped config.properties but no model loaded, and the two
archives `make test` builds in model_store/: sentiment.mar (1.0, as shipped: ONNX Runtime int8) and
sentiment-torch.mar (2.0, PyTorch fp32).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import requests

from common.paths import ROOT
from testbed.local_server import LocalTorchServe

# models registered, scaled and waited for on a node of its own
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def empty_server(default_store, tmp_path_factory):
    if not (default_store / "sentiment-torch.mar").is_file():
        pytest.fail("model_store/sentiment-torch.mar is missing: run the tests with `make test`")
    ts = LocalTorchServe(
        model_store=default_store,
        workdir=tmp_path_factory.mktemp("ts-mgmt"),
        overrides={"load_models": "", "models": "{}"},
    )
    ts.start(wait_for_models=False)
    yield ts
    ts.stop()


def manage(server, *args, key_file=None) -> tuple[int, object, str]:
    """Run the CLI against the server; (exit code, parsed stdout, stderr)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "clients.manage",
            "--config",
            str(server.workdir / "config.properties"),
            "--key-file",
            str(key_file or server.workdir / "key_file.json"),
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    out = json.loads(result.stdout) if result.returncode == 0 and result.stdout.strip() else None
    return result.returncode, out, result.stderr


def predict(server, text, version=""):
    path = "/predictions/sentiment" + (f"/{version}" if version else "")
    return requests.post(
        server.url("inference", path),
        json={"text": text},
        headers={"Authorization": f"Bearer {server.keys['inference']}"},
        timeout=60,
    )


def described(server, version=None) -> dict:
    code, out, err = manage(server, "describe", "sentiment", *([version] if version else []))
    assert code == 0, err
    return out[0]


def served_models(server) -> dict:
    code, out, err = manage(server, "list")
    assert code == 0, err
    return {m["modelName"]: m["modelUrl"] for m in out["models"]}


def test_lifecycle_register_scale_versions_default_unregister(empty_server):
    server = empty_server
    assert served_models(server) == {}

    code, out, err = manage(
        server, "register", "sentiment.mar", "--batch-size", "8", "--max-batch-delay", "3", "--workers", "1"
    )
    assert code == 0, err
    model = described(server)
    assert (model["modelVersion"], model["batchSize"], model["maxBatchDelay"]) == ("1.0", 8, 3)
    assert [w["status"] for w in model["workers"]] == ["READY"]
    assert predict(server, "I love this").json()["label"] == "positive"

    code, _, err = manage(server, "scale", "sentiment", "--workers", "2")
    assert code == 0, err
    assert [w["status"] for w in described(server)["workers"]] == ["READY", "READY"]
    code, _, err = manage(server, "scale", "sentiment", "1.0", "--workers", "1")
    assert code == 0, err
    assert len(described(server)["workers"]) == 1

    code, _, err = manage(
        server, "register", "sentiment-torch.mar", "--batch-size", "16", "--max-batch-delay", "2", "--workers", "1"
    )
    assert code == 0, err
    reference = described(server, "2.0")
    assert (reference["modelVersion"], reference["batchSize"], [w["status"] for w in reference["workers"]]) == (
        "2.0",
        16,
        ["READY"],
    )
    for version in ("1.0", "2.0"):
        answer = predict(server, "This is terrible", version)
        assert answer.status_code == 200 and answer.json()["label"] == "negative", version

    # the default version answers unversioned calls: first 1.0, then 2.0 after the switch.
    # ONNX Runtime int8 and PyTorch fp32 give slightly different scores, which tells the versions apart.
    text = "the service was fine I guess"
    score = {v: predict(server, text, v).json()["score"] for v in ("1.0", "2.0")}
    assert abs(score["1.0"] - score["2.0"]) > 1e-5
    assert predict(server, text).json()["score"] == pytest.approx(score["1.0"], abs=1e-7)
    code, _, err = manage(server, "set-default", "sentiment", "2.0")
    assert code == 0, err
    assert predict(server, text).json()["score"] == pytest.approx(score["2.0"], abs=1e-7)

    code, _, err = manage(server, "unregister", "sentiment", "2.0")
    assert code != 0 and "default" in err.lower()  # TorchServe keeps the default version
    code, _, err = manage(server, "unregister", "sentiment", "1.0")
    assert code == 0, err
    assert predict(server, "fine", "1.0").status_code == 404
    assert predict(server, "fine").status_code == 200  # 2.0, still the default
    code, _, err = manage(server, "unregister", "sentiment")
    assert code == 0, err
    assert served_models(server) == {}
    assert predict(server, "fine").status_code == 404


@pytest.mark.parametrize(
    "url, message",
    [
        ("no-such-archive.mar", "not found"),
        ("https://example.com/sentiment.mar", "allowed"),
        ("file:///etc/passwd", "allowed"),
        ("../model_store/sentiment.mar", "relative"),
        ("{outside}/elsewhere.mar", "not found"),  # a real archive outside the store
    ],
)
def test_bad_registrations_are_refused_and_change_nothing(empty_server, default_store, tmp_path, url, message):
    """TorchServe's own refusal (allowed_urls, the model store), called directly: the CLI
    refuses these before calling it (test_manage_cli.py)."""
    server = empty_server
    shutil.copy(default_store / "sentiment.mar", tmp_path / "elsewhere.mar")
    url = url.format(outside=tmp_path)
    code, _, err = manage(server, "register", "sentiment.mar", "--workers", "1")
    assert code == 0, err
    try:
        refused = requests.post(
            server.url("management", "/models"),
            params={"url": url, "initial_workers": 1},
            headers={"Authorization": f"Bearer {server.keys['management']}"},
            timeout=60,
        )
        assert refused.status_code >= 400
        assert message in refused.json()["message"].lower()
        assert served_models(server) == {"sentiment": "sentiment.mar"}
        assert predict(server, "I love this").status_code == 200
    finally:
        manage(server, "unregister", "sentiment")


def test_bad_token_is_refused_and_changes_nothing(empty_server, tmp_path):
    server = empty_server
    wrong = json.loads((server.workdir / "key_file.json").read_text())
    wrong["management"]["key"] = "not-the-key"
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps(wrong))
    code, _, err = manage(server, "register", "sentiment.mar", key_file=key_file)
    assert code != 0 and "token" in err.lower()
    assert served_models(server) == {}
