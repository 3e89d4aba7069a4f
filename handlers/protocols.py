"""The wire protocols a request can arrive in, as plain functions: this project's own
(`{"text": ...}`), KServe's v1 (`{"instances": [...]}` -> `{"predictions": [...]}`) and the
Open Inference Protocol v2 (`{"inputs": [...]}` -> `{"outputs": [...]}`).

The gateway routes /v1/models/<m>:predict and /v2/models/<m>/infer to TorchServe's
predictions API and says which protocol in the `sentiment-protocol` header; without it a
request is the native protocol. Whatever the protocol, the texts go through the same
parsing limits, batching and model; only the envelope differs, and so does the shape of
an error: v1 and v2 answer `{"error": "..."}` (KServe's and the OIP's REST error shape).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import kserve_v1
import oip_v2
from bodies import Limits, ParsedRequest, json_body
from contract import KSERVE_V1, NATIVE, OIP_V2
from errors import RequestError
from native import parse_request


def protocol_of(header_value: str | None) -> str:
    return header_value if header_value in (KSERVE_V1, OIP_V2) else NATIVE


@dataclass(frozen=True)
class Envelope:
    """What a request's answer is wrapped in, beyond its texts' predictions."""

    protocol: str = NATIVE
    request_id: str | None = None  # v2: echoed back
    outputs: tuple[str, ...] = oip_v2.OUTPUTS  # v2: the outputs asked for


@dataclass(frozen=True)
class Model:
    name: str
    version: str | None


def parse(
    row: dict[str, Any], limits: Limits, content_type: str | None, protocol: str
) -> tuple[ParsedRequest, Envelope]:
    """One request in `protocol` -> its texts and envelope, or RequestError."""
    if protocol == NATIVE:
        return parse_request(row, limits, content_type), Envelope()
    value = json_body(row, content_type)
    if protocol == KSERVE_V1:
        return kserve_v1.parse(value, limits), Envelope(KSERVE_V1)
    request, request_id, outputs = oip_v2.parse(value, limits)
    return request, Envelope(OIP_V2, request_id, outputs)


def render(
    envelope: Envelope,
    outcome: list[dict[str, Any]] | RequestError,
    labels: Sequence[str],
    model: Model,
    is_list: bool = True,
) -> tuple[int, str]:
    """(HTTP status, JSON body) of one request: its predictions, or its error, in its protocol."""
    if isinstance(outcome, RequestError):
        if envelope.protocol == NATIVE:
            return outcome.status, json.dumps(outcome.body())
        return outcome.status, json.dumps({"error": f"{outcome.kind}: {outcome.message}"})
    if envelope.protocol == NATIVE:
        return 200, json.dumps(outcome if is_list else outcome[0])
    if envelope.protocol == KSERVE_V1:
        return 200, json.dumps({"predictions": outcome})
    n = len(outcome)
    tensors = {
        "label": {"name": "label", "datatype": "BYTES", "shape": [n], "data": [p["label"] for p in outcome]},
        "score": {"name": "score", "datatype": "FP32", "shape": [n], "data": [p["score"] for p in outcome]},
        "scores": {
            "name": "scores",
            "datatype": "FP32",
            "shape": [n, len(labels)],
            "data": [p["scores"][label] for p in outcome for label in labels],
            "parameters": {"labels": ",".join(labels)},
        },
    }
    body: dict[str, Any] = {"model_name": model.name}
    if model.version:
        body["model_version"] = model.version
    if envelope.request_id is not None:
        body["id"] = envelope.request_id
    body["outputs"] = [tensors[name] for name in envelope.outputs]
    return 200, json.dumps(body)
