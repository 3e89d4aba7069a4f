"""The PyTorch and ONNX Runtime backends on the tiny model: the same predictions, int8 in
both, device selection and fp16, warm-up at load, and an export that fails clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from handler_helpers import initialized_handler, make_context, run_batch
from hypothesis import given, settings
from hypothesis import strategies as st

from backends import TorchBackend, select_device
from sentiment_handler import SentimentHandler
from text_classification import HandlerOptions, TextTokenizer, pad

JSON = "application/json"
TEXTS = ["I love it", "terrible service, never again", "meh", "a long one " * 20]


def answers(model_dir, options):
    handler, context = initialized_handler(model_dir, options)
    rows = [({"body": f'{{"text": "{t}"}}'.encode()}, JSON) for t in TEXTS]
    return handler, [body for _, body, _ in run_batch(handler, context, rows)]


@pytest.mark.parametrize("quantize, tolerance", [("none", 1e-4), ("int8", 0.15)])
def test_onnxruntime_answers_as_torch(tiny_model_dir, onnx_model_dir, quantize, tolerance):
    _, reference = answers(tiny_model_dir, {})
    handler, got = answers(onnx_model_dir[quantize], {"backend": "onnxruntime", "quantize": quantize})
    assert type(handler.backend).__name__ == "OnnxRuntimeBackend"
    for r, g in zip(reference, got, strict=True):
        assert g["scores"]["positive"] == pytest.approx(r["scores"]["positive"], abs=tolerance)
        if quantize == "none":
            assert g["label"] == r["label"]


def test_torch_int8_quantizes_and_keeps_predictions(tiny_model_dir):
    _, reference = answers(tiny_model_dir, {})
    handler, got = answers(tiny_model_dir, {"quantize": "int8"})
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    modules = list(handler.backend.model.modules())
    assert any(isinstance(m, DynamicQuantizedLinear) for m in modules)
    assert not any(type(m) is torch.nn.Linear for m in modules)
    for r, g in zip(reference, got, strict=True):
        assert g["scores"]["positive"] == pytest.approx(r["scores"]["positive"], abs=0.05)


def test_onnxruntime_without_a_graph_in_the_archive_says_how_to_make_one(tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="backend=onnxruntime"):
        SentimentHandler().initialize(make_context(tiny_model_dir, {"backend": "onnxruntime"}))


@pytest.mark.parametrize(
    "gpu_id, cuda, options, device",
    [
        (None, False, {}, "cpu"),
        (0, False, {}, "cpu"),  # TorchServe gave a GPU id, but there is no CUDA
        (None, True, {}, "cpu"),  # no GPU given to this worker
        (1, True, {}, "cuda:1"),
        (0, True, {"half": True}, "cuda:0"),
        ("2", True, {"quantize": "none"}, "cuda:2"),
    ],
)
def test_device_selection(gpu_id, cuda, options, device):
    assert select_device(gpu_id, cuda, HandlerOptions(**options)) == device


@pytest.mark.parametrize(
    "gpu_id, cuda, options, message",
    [
        (None, False, {"half": True}, "half"),
        (0, True, {"half": True, "backend": "onnxruntime"}, "half"),
        (0, True, {"quantize": "int8"}, "int8"),
    ],
)
def test_options_for_the_other_device_are_refused(gpu_id, cuda, options, message):
    with pytest.raises(ValueError, match=message):
        select_device(gpu_id, cuda, HandlerOptions(**options))


def test_half_casts_the_model_to_fp16(tiny_model_dir):
    """What half: true does on a GPU, run here on the CPU (selection refuses it there)."""
    fp32 = TorchBackend(str(tiny_model_dir), HandlerOptions(), "cpu", 1)
    fp16 = TorchBackend(str(tiny_model_dir), HandlerOptions(half=True), "cpu", 1)
    assert {p.dtype for p in fp16.model.parameters()} == {torch.float16}
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(tiny_model_dir)(TEXTS, padding=True, return_tensors="np")
    for a, b in zip(fp32.probabilities(batch), fp16.probabilities(batch), strict=True):
        assert b == pytest.approx(a, abs=1e-2)


def test_warm_up_runs_before_the_worker_is_ready(tiny_model_dir, monkeypatch):
    import backends

    calls = []
    original = backends.TorchBackend.probabilities
    monkeypatch.setattr(
        backends.TorchBackend,
        "probabilities",
        lambda self, batch: calls.append(tuple(batch["input_ids"].shape)) or original(self, batch),
    )
    handler = SentimentHandler()
    handler.initialize(make_context(tiny_model_dir, {"warmup_batches": 3, "micro_batch_size": 4}))
    assert handler.initialized and len(calls) == 3
    assert calls[0][0] == 1 and calls[-1] == (4, handler.max_length)  # one short text .. a full pass at max_length


def test_backend_and_quantize_are_the_archives_not_a_deployments():
    with pytest.raises(ValueError, match="archived"):
        HandlerOptions.from_model_yaml({"handler": {}}, {"backend": "onnxruntime"})


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = "[UNK]"  # a pad id other than 0, which an all-zeros pad would get right by chance
    assert tokenizer.pad_token_id != 0
    return tokenizer


@settings(max_examples=80, deadline=None)
@given(texts=st.lists(st.text(max_size=60), min_size=1, max_size=6), left=st.booleans())
def test_pad_gives_what_the_tokenizers_own_pad_gives(tokenizer, texts, left):
    encoded = tokenizer(texts, truncation=True, max_length=32)
    features = [{key: encoded[key][i] for key in encoded.keys()} for i in range(len(texts))]
    tokenizer.padding_side = "left" if left else "right"
    try:
        expected = tokenizer.pad(features, return_tensors="np")
    finally:
        tokenizer.padding_side = "right"
    values = {"input_ids": tokenizer.pad_token_id, "token_type_ids": tokenizer.pad_token_type_id}
    got = pad(features, values, left)
    assert set(got) == set(expected.keys())
    for key in got:
        assert got[key].dtype == np.int64
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


@pytest.fixture(scope="module")
def both_tokenizers(tiny_model_dir):
    from transformers import AutoTokenizer

    return TextTokenizer(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.text(max_size=400), min_size=1, max_size=6),
    max_length=st.sampled_from([4, 16, 128]),
)
def test_the_handlers_tokenizer_gives_what_transformers_gives(both_tokenizers, texts, max_length):
    """The handler tokenizes with the `tokenizers` library alone (no transformers in a
    worker); every text, truncated or not, must get the very tokens transformers' tokenizer
    of the same checkpoint gives, and the same padding values."""
    ours, theirs = both_tokenizers
    expected = theirs(texts, truncation=True, max_length=max_length)
    got = ours.tokenize(texts, max_length)
    for i, features in enumerate(got):
        assert features == {key: expected[key][i] for key in expected.keys()}
    assert ours.pad_values == {"input_ids": theirs.pad_token_id, "token_type_ids": theirs.pad_token_type_id}
    assert ours.padding_left == (theirs.padding_side == "left")
    assert ours.model_max_length == theirs.model_max_length


def test_the_handlers_tokenizer_gives_what_transformers_gives_on_the_held_out_tweets(both_tokenizers):
    from training.tweets import split_tweets

    ours, theirs = both_tokenizers
    texts = [t.text for t in split_tweets()[1]]
    expected = theirs(texts, truncation=True, max_length=128)
    got = ours.tokenize(texts, 128)
    assert [g["input_ids"] for g in got] == expected["input_ids"]
    assert [g["attention_mask"] for g in got] == expected["attention_mask"]
    assert [g["token_type_ids"] for g in got] == expected["token_type_ids"]


def test_an_onnx_worker_never_imports_transformers(onnx_model_dir):
    """The point of TextTokenizer and CheckpointConfig: a worker serving the ONNX graph loads,
    warms up and answers without transformers (it would add ~28 MiB a worker) when it does
    not explain (explanations: false; the explainer needs transformers)."""
    import subprocess
    import sys
    from pathlib import Path

    handlers = Path(__file__).resolve().parents[2] / "handlers"
    script = (
        "import sys; from handler_helpers import initialized_handler, run_batch; "
        f"h, c = initialized_handler({str(onnx_model_dir['int8'])!r}, "
        "{'backend': 'onnxruntime', 'quantize': 'int8', 'micro_batch_size': 1, 'explanations': False}); "
        "[(status, answer, _)] = run_batch(h, c, [({'body': b'{\"text\": \"I love it\"}'}, 'application/json')]); "
        "assert status == 200 and 'label' in answer, answer; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))"
    )
    tests = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={
            "PYTHONPATH": f"{handlers}:{tests}:{tests.parent}",
            "PATH": "/usr/bin:/bin",
            "TOKENIZERS_PARALLELISM": "false",
        },
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
