"""Fixtures of the unit tests (the tiny model itself is tests/conftest.py's)."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def onnx_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny checkpoint with its fp32 and its int8 ONNX graph beside it, as archive.sh packs
    them for backend: onnxruntime: {"none": folder, "int8": folder}."""
    from export_onnx import export

    out = {}
    for quantize in ("none", "int8"):
        folder = tmp_path_factory.mktemp(f"onnx-{quantize}")
        shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
        export(tiny_model_dir, folder, quantize)
        out[quantize] = folder
    return out
