"""archive.sh: what it packs, and how it refuses a missing or incomplete model folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO


def archive(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [str(REPO / "archive.sh"), *args], capture_output=True, text=True, env=env, cwd=REPO
    )


def test_archive_packs_checkpoint_handler_and_config(tiny_model_dir, tmp_path):
    result = archive("--model", str(tiny_model_dir), "--name", "tiny", "--version", "3.1",
                     "--store", str(tmp_path))
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "tiny.mar") as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "sentiment_handler.py", "text_classification.py", "model-config.yaml"} <= names
    assert manifest["model"]["modelName"] == "tiny"
    assert manifest["model"]["modelVersion"] == "3.1"
    assert manifest["model"]["handler"] == "sentiment_handler.py"
    assert manifest["model"]["configFile"] == "model-config.yaml"


def test_missing_model_folder_is_a_clear_error(tmp_path):
    result = archive("--model", str(tmp_path / "nope"), "--store", str(tmp_path))
    assert result.returncode != 0
    assert "does not exist" in result.stderr and "make model" in result.stderr
    assert not (tmp_path / "sentiment.mar").exists()


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
    result = archive("--model", str(broken), "--store", str(tmp_path))
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "sentiment.mar").exists()
