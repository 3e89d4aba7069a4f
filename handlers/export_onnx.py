"""Export a sequence-classification checkpoint to ONNX for the onnxruntime backend.

    python handlers/export_onnx.py MODEL_DIR OUT_DIR [--quantize int8]      (archive.sh runs it)

Writes OUT_DIR/model.onnx with dynamic batch and sequence axes, dynamically quantized to
int8 with ONNX Runtime when asked, and checks it against the PyTorch model on texts of
several lengths before the archive is made: a checkpoint that does not export, or whose
graph answers otherwise (beyond the tolerance of its precision), fails the archive step
with a message. Runs at archive time only, never in a worker.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# the graph's names and the softmax are the serving side's (this file's folder is on the path)
from backends import ONNX_FILE, ONNX_INPUTS, ONNX_OUTPUT, softmax

CHECK_TEXTS = [
    "I love this",
    "This is terrible, truly the worst service I have had in years",
    "meh",
    "a " * 60 + "long one",
]
# largest difference in class probability from the PyTorch model that the check accepts
TOLERANCE = {"none": 1e-4, "int8": 0.15}


class ExportError(Exception):
    pass


def export(model_dir: Path, out_dir: Path, quantize: str = "none") -> Path:
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    except Exception as e:
        raise ExportError(f"the checkpoint in {model_dir} does not load: {type(e).__name__}: {e}") from e
    sample = tokenizer(CHECK_TEXTS[:2], padding=True, truncation=True, return_tensors="pt")
    names = [n for n in ONNX_INPUTS if n in sample]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / ONNX_FILE
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / ONNX_FILE
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
                torch.onnx.export(
                    model,
                    (),
                    str(fp32),
                    kwargs={n: sample[n] for n in names},
                    input_names=names,
                    output_names=[ONNX_OUTPUT],
                    dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, ONNX_OUTPUT: {0: "batch"}},
                    opset_version=17,
                    dynamo=False,
                )
        except Exception as e:
            raise ExportError(f"{type(model).__name__} does not export to ONNX: {type(e).__name__}: {e}") from e
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8)
        else:
            fp32.replace(target)

    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    check = tokenizer(CHECK_TEXTS, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        expected = torch.softmax(model(**check).logits, dim=-1).numpy()
    (logits,) = session.run([ONNX_OUTPUT], {n: check[n].numpy().astype(np.int64) for n in names})
    got = softmax(logits)
    worst = float(np.abs(got - expected).max())
    if worst > TOLERANCE[quantize]:
        target.unlink()
        raise ExportError(
            f"the exported graph ({quantize}) differs from the PyTorch model by {worst:.4f} "
            f"in a class probability (tolerance {TOLERANCE[quantize]})"
        )
    print(
        f"exported {target} ({quantize}, {target.stat().st_size / 1e6:.0f} MB), "
        f"largest probability difference from PyTorch {worst:.2e}"
    )
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="handlers/export_onnx.py", description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--quantize", choices=sorted(TOLERANCE), default="none")
    args = p.parse_args(argv)
    try:
        export(args.model_dir, args.out_dir, args.quantize)
    except ExportError as e:
        print(f"export_onnx: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
