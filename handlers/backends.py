"""What runs the model: PyTorch, or ONNX Runtime on the graph the archive step exported.

Both take a padded batch of int64 arrays (text_classification.pad) and give class
probabilities per text; parsing, batching and labels stay the handler's plain functions.
Chosen by the `backend` handler
option; `quantize: int8` means dynamic int8 quantization of the Linear layers (PyTorch) or
of the whole graph's MatMuls (ONNX Runtime, done at archive time), `half: true` fp16 on a
GPU (PyTorch only).
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from text_classification import HandlerOptions

# The ONNX graph's names, here for both sides: handlers/export_onnx.py writes the graph at
# archive time, OnnxRuntimeBackend runs it in the worker.
ONNX_FILE = "model.onnx"  # at the archive's top level
# the order the exporter gives the graph's inputs: the model's forward signature
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_OUTPUT = "logits"


class Backend(Protocol):
    """What the handler needs of what runs the model (TorchBackend, OnnxRuntimeBackend, and
    the benchmark's stand-in bench/noop_handler.py's NoModel): class probabilities for a
    padded batch (text_classification.pad), and the checkpoint's config for its labels."""

    @property
    def device(self) -> object: ...  # "cpu", or the torch.device it runs on (logged)

    @property
    def threads(self) -> int: ...

    @property
    def config(self) -> Any: ...  # id2label, num_labels, max_position_embeddings (CheckpointConfig's fields)

    def probabilities(self, batch: Mapping[str, np.ndarray]) -> list[list[float]]: ...


def select_device(gpu_id: int | str | None, cuda_available: bool, options: HandlerOptions) -> str:
    """ "cuda:N" when TorchServe gave this worker a GPU and one is there, else "cpu"; and
    the options that only make sense on one of them are refused on the other."""
    device = f"cuda:{gpu_id}" if gpu_id is not None and cuda_available else "cpu"
    if options.half and (device == "cpu" or options.backend != "torch"):
        raise ValueError("handler option half: true runs on a GPU with backend: torch only")
    if options.quantize == "int8" and device != "cpu":
        raise ValueError("handler option quantize: int8 runs on the CPU only; use half: true on a GPU")
    return device


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits [texts, classes], computed in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return probabilities


@dataclass(frozen=True)
class CheckpointConfig:
    """What the handler reads of a checkpoint's config.json, read without transformers
    (which the ONNX Runtime path never imports): labels by class index and the longest
    input the position embeddings cover. Labels default as transformers' do (2 classes,
    LABEL_i)."""

    id2label: dict[int, str]
    max_position_embeddings: int | None

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @classmethod
    def read(cls, model_dir: str) -> CheckpointConfig:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        labels = config.get("id2label") or {i: f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))}
        positions = config.get("max_position_embeddings")
        return cls({int(k): str(v) for k, v in labels.items()}, positions if isinstance(positions, int) else None)


class TorchBackend:
    def __init__(self, model_dir: str, options: HandlerOptions, device: str, threads: int) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        model.to(self.device).eval()
        if options.half:
            model.half()
        if options.quantize == "int8":
            model = quantize_int8(model)
        self.model: Any = model
        self.config: Any = model.config
        self.threads: int = torch.get_num_threads()
        # the tokenizer gives every input (TextTokenizer); the model takes those its forward names
        self.inputs = set(inspect.signature(model.forward).parameters)

    def probabilities(self, batch: Mapping[str, np.ndarray]) -> list[list[float]]:
        with self.torch.inference_mode():
            inputs = {
                key: self.torch.from_numpy(array).to(self.device) for key, array in batch.items() if key in self.inputs
            }
            logits = self.model(**inputs).logits
        probabilities: list[list[float]] = self.torch.softmax(logits.float(), dim=-1).cpu().tolist()
        return probabilities


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization of the Linear layers: int8 weights, activations quantized
    on the fly (CPU)."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao.quantization and its quantized tensors are deprecated in favour of
        # torchao, but they are what torch 2.13 ships; keep the worker log readable.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)  # type: ignore[no-untyped-call]


class OnnxRuntimeBackend:
    def __init__(self, model_dir: str, options: HandlerOptions, threads: int) -> None:
        import onnxruntime as ort

        path = Path(model_dir) / ONNX_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"backend: onnxruntime needs {ONNX_FILE} in the archive: "
                "archive with --option backend=onnxruntime, which exports it"
            )
        settings = ort.SessionOptions()
        settings.intra_op_num_threads = threads
        settings.inter_op_num_threads = 1
        settings.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.config: Any = CheckpointConfig.read(model_dir)
        self.threads = threads
        self.device = "cpu"

    def probabilities(self, batch: Mapping[str, np.ndarray]) -> list[list[float]]:
        feed = {name: batch[name] for name in self.inputs}
        (logits,) = self.session.run([ONNX_OUTPUT], feed)
        probabilities: list[list[float]] = softmax(logits).tolist()
        return probabilities


def load(
    model_dir: str, options: HandlerOptions, gpu_id: int | str | None, cuda_available: bool, threads: int
) -> Backend:
    device = select_device(gpu_id, cuda_available, options)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if options.backend == "onnxruntime":
        return OnnxRuntimeBackend(model_dir, options, threads)
    return TorchBackend(model_dir, options, device, threads)
