"""The contracts between the handler's stages and with TorchServe.

What preprocess hands to inference and inference to postprocess (TorchServe's three
stages), and what the handler uses of TorchServe's per-batch context. Kept out of
sentiment_handler.py: TorchServe loads a handler module only if it defines one class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from errors import RequestError
from protocols import Envelope
from text_classification import Batch, Tally

Encoding = dict[str, list[int]]  # one tokenized text: input_ids, attention_mask, ...


@dataclass
class Preprocessed:
    """preprocess -> inference: the batch's requests parsed and their texts tokenized."""

    batch: Batch
    encodings: list[Encoding | Exception]  # per text of the batch: its tokens, or what tokenizing it raised
    envelopes: list[Envelope]  # per request: the protocol it is answered in
    tally: Tally  # the batch's metrics, counted as it goes


@dataclass
class Inferred:
    """inference -> postprocess: the class probabilities of each text, or its error."""

    batch: Batch
    probabilities: list[list[float] | RequestError]  # per text of the batch
    envelopes: list[Envelope]
    tally: Tally


class Context(Protocol):
    """What the handler uses of TorchServe's ts.context.Context: one for the worker, its
    request headers and response settings those of the batch being answered."""

    system_properties: dict[str, Any]
    model_name: str
    metrics: Any  # ts.metrics.metric_cache_abstract.MetricCacheAbstract: add_metric(...)

    def get_request_header(self, idx: int, key: str) -> str | None: ...

    def get_all_request_header(self, idx: int) -> dict[str, Any]: ...

    def set_response_content_type(self, idx: int, value: str) -> None: ...

    def set_response_header(self, idx: int, key: str, value: str) -> None: ...

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None: ...
