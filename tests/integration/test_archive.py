"""archive.sh: what it packs, and how it refuses a missing or incomplete model folder or a
checkpoint that cannot be exported (a script run as a user runs it: tests/integration)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from common.paths import HANDLERS, MODEL_STORE, ROOT
from helpers import handler_imports


def archive(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([str(ROOT / "archive.sh"), *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_archive_packs_checkpoint_handler_and_config(tiny_model_dir, tmp_path):
    result = archive(
        "--model", str(tiny_model_dir), "--name", "tiny", "--version", "3.1", "--out", str(tmp_path / "tiny.mar")
    )
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "tiny.mar") as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "sentiment_handler.py",
        "text_classification.py",
        "protocols.py",
        "backends.py",
        "model-config.yaml",
    } <= names
    # the shipped options name the onnxruntime backend: its graph was exported into the archive
    assert ("model.onnx" in names) == (
        yaml.safe_load((ROOT / "model-config.yaml").read_text())["handler"]["backend"] == "onnxruntime"
    )
    assert manifest["model"]["modelName"] == "tiny"
    assert manifest["model"]["modelVersion"] == "3.1"
    assert manifest["model"]["handler"] == "sentiment_handler.py"
    assert manifest["model"]["configFile"] == "model-config.yaml"
    packed = yaml.safe_load(mar_member(tmp_path / "tiny.mar", "model-config.yaml"))
    assert packed == yaml.safe_load((ROOT / "model-config.yaml").read_text())


def test_the_built_archive_holds_every_module_the_handler_imports():
    """model_store/sentiment.mar as `make archive` built it (an archive once shipped
    without one of its modules): the handler and each module it imports, at the top."""
    with zipfile.ZipFile(MODEL_STORE / "sentiment.mar") as mar:
        names = set(mar.namelist())
    needed = {"sentiment_handler", *handler_imports(HANDLERS / "sentiment_handler.py")}
    assert {f"{m}.py" for m in needed} <= names


def mar_member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as mar:
        return mar.read(name)


def test_options_set_handler_options_in_the_packed_config(tiny_model_dir, tmp_path):
    out = tmp_path / "any-file-name.mar"
    result = archive(
        "--model",
        str(tiny_model_dir),
        "--version",
        "2.0",
        "--option",
        "backend=torch",
        "--option",
        "quantize=int8",
        "--option",
        "torch_threads=1",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    packed = yaml.safe_load(mar_member(out, "model-config.yaml"))
    shipped = yaml.safe_load((ROOT / "model-config.yaml").read_text())
    assert packed["handler"] == {**shipped["handler"], "backend": "torch", "quantize": "int8", "torch_threads": 1}
    assert packed["responseTimeout"] == shipped["responseTimeout"]
    manifest = json.loads(mar_member(out, "MAR-INF/MANIFEST.json"))
    assert (manifest["model"]["modelName"], manifest["model"]["modelVersion"]) == ("sentiment", "2.0")


def test_relative_paths_are_taken_from_the_callers_directory(tiny_model_dir, tmp_path):
    shutil.copytree(tiny_model_dir, tmp_path / "mine")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        [str(ROOT / "archive.sh"), "--model", "mine", "--option", "backend=torch", "--out", "x.mar"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.mar").is_file()


def test_a_checkpoint_of_symbolic_links_is_packed_whole(tiny_model_dir, tmp_path):
    """The Hugging Face cache's layout: a snapshot folder whose files link to blobs, named
    through a link to the folder. The links' targets are what gets packed."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc123"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for f in tiny_model_dir.iterdir():
        shutil.copy(f, blobs / f"blob-{f.name}")
        (snapshot / f.name).symlink_to(blobs / f"blob-{f.name}")
    (tmp_path / "current").symlink_to(snapshot)
    out = tmp_path / "linked.mar"
    result = archive("--model", str(tmp_path / "current"), "--option", "backend=torch", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(out) as mar:
        for f in tiny_model_dir.iterdir():
            assert mar.read(f.name) == f.read_bytes(), f.name


def test_missing_model_folder_is_a_clear_error(tmp_path):
    result = archive("--model", str(tmp_path / "nope"), "--out", str(tmp_path / "sentiment.mar"))
    assert result.returncode != 0
    assert "does not exist" in result.stderr and "make model" in result.stderr
    assert not (tmp_path / "sentiment.mar").exists()


def test_option_without_a_value_is_refused(tiny_model_dir, tmp_path):
    result = archive("--model", str(tiny_model_dir), "--option", "quantize", "--out", str(tmp_path / "x.mar"))
    assert result.returncode != 0 and "KEY=VALUE" in result.stderr


@pytest.mark.parametrize(
    "remove, message",
    [
        ("config.json", "no config.json"),
        ("model.safetensors", "no model.safetensors"),
        ("tokenizer.json", "no tokenizer files"),
    ],
)
def test_incomplete_model_folder_is_a_clear_error(tiny_model_dir, tmp_path, remove, message):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / remove).unlink()
    result = archive("--model", str(broken), "--out", str(tmp_path / "sentiment.mar"))
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "sentiment.mar").exists()


def test_a_checkpoint_that_does_not_load_fails_the_archive_with_a_message(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    result = archive("--model", str(broken), "--option", "backend=onnxruntime", "--out", str(tmp_path / "x.mar"))
    assert result.returncode != 0
    assert "could not be exported to ONNX" in result.stderr and "does not load" in result.stderr
    assert not (tmp_path / "x.mar").exists()
