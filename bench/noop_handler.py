"""TorchServe's floor: the shipped handler with no model behind it.

The same TorchServe, batching, parsing, tokenizing, metrics and answers as
handlers/sentiment_handler.py; only the forward pass is replaced by a uniform answer. Served
side by side with the real model in the benchmark, it shows what TorchServe and the
handler cost by themselves. bench/run.py archives it (never a shipped archive).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from sentiment_handler import SentimentHandler

if TYPE_CHECKING:  # for mypy only: bench/handler_cost.py loads revisions of handlers/ without it
    from backends import Backend


class NoopHandler(SentimentHandler):
    class NoModel:
        """A backend that answers every text with the same probabilities, at no cost."""

        # what handlers/ asked of a backend before text_classification.pad (bench/handler_cost.py
        # loads those revisions)
        tensor_type = "np"
        device = "cpu"
        threads = 1

        def __init__(self, model_dir: str):
            from transformers import AutoConfig

            self.config = AutoConfig.from_pretrained(model_dir)
            self.uniform = [1.0 / self.config.num_labels] * self.config.num_labels

        def probabilities(self, batch: Mapping[str, np.ndarray]) -> list[list[float]]:
            return [list(self.uniform) for _ in batch["input_ids"]]

    def _load_explainer(self) -> None:
        """No explainer: the archive has no weights, and the bench measures predictions."""

    def _load_backend(self, model_dir: str, gpu_id: int | str | None, cuda_available: bool) -> Backend:
        # TorchServe takes the one class defined at a handler module's top level; mypy checks
        # that NoModel is a Backend here
        return self.NoModel(model_dir)
