"""A slow model for the fault and overload tests: the shipped handler, with a sleep after
each batch's forward passes. Archived in place of sentiment_handler.py
(tests/helpers.tiny_archive(..., latency_ms=N): archive.sh --handler), it reads N from
the archive's model-config.yaml, `slow_model: {latency_ms: N}`, a section of its own: the
shipped handler's options have no test-only knob."""

from __future__ import annotations

import time
from typing import Any

from sentiment_handler import SentimentHandler

SECTION = "slow_model"


class SlowSentimentHandler(SentimentHandler):
    def initialize(self, context: Any) -> None:
        super().initialize(context)
        section = (getattr(context, "model_yaml_config", None) or {}).get(SECTION) or {}
        self.latency_s = float(section.get("latency_ms", 0)) / 1000

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        inferred = super().inference(data, *args, **kwargs)
        time.sleep(self.latency_s)
        return inferred
