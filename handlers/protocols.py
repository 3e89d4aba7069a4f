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
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from contract import KSERVE_V1, NATIVE, OIP_V2

from errors import EmptyText, InvalidInput, RequestError, TooManyTexts
from text_classification import (
    Limits,
    ParsedRequest,
    check_text,
    json_body,
    json_type,
    parse_request,
)

V2_OUTPUTS = ("label", "score", "scores")


def protocol_of(header_value: str | None) -> str:
    return header_value if header_value in (KSERVE_V1, OIP_V2) else NATIVE


@dataclass(frozen=True)
class Envelope:
    """What a request's answer is wrapped in, beyond its texts' predictions."""

    protocol: str = NATIVE
    request_id: str | None = None  # v2: echoed back
    outputs: tuple[str, ...] = V2_OUTPUTS  # v2: the outputs asked for


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
        return _parse_v1(value, limits), Envelope(KSERVE_V1)
    return _parse_v2(value, limits)


def _object(value: Any, example: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"the body must be an object like {example}, not {json_type(value)}")
    return value


def _unknown_fields(value: dict[str, Any], known: Sequence[str], where: str) -> None:
    unknown = [k for k in value if k not in known]
    if unknown:
        raise InvalidInput(f"{where} has {len(unknown)} unknown field(s); it takes {', '.join(known)}")


def _count(n: int, limits: Limits, what: str) -> None:
    if n == 0:
        raise EmptyText(f"{what} is empty")
    if n > limits.max_texts_per_request:
        raise TooManyTexts(f"{what} has {n} items; the limit is {limits.max_texts_per_request}")


def _parse_v1(value: Any, limits: Limits) -> ParsedRequest:
    body = _object(value, '{"instances": ["..."]}')
    _unknown_fields(body, ("instances", "parameters"), "the body")
    instances = body.get("instances")
    if not isinstance(instances, list):
        raise InvalidInput(f'"instances" must be a list, not {json_type(instances)}')
    _count(len(instances), limits, '"instances"')
    texts = []
    for i, instance in enumerate(instances):
        where = f'"instances"[{i}]'
        if isinstance(instance, dict):  # {"text": "..."} per instance
            _unknown_fields(instance, ("text",), where)
            instance, where = instance.get("text"), f'{where}["text"]'
        texts.append(check_text(instance, where, limits))
    return ParsedRequest(tuple(texts), True)


MAX_SHAPE_DIMS = 8  # dimensions of the "text" tensor's shape (it is [n], [n, 1] or [1, n] in practice)


def _shape(value: Any, limits: Limits) -> int:
    """The number of elements the "shape" `value` holds, or RequestError: checked dimension by
    dimension before anything is multiplied, so that a shape of a few huge integers (a
    number of 4,000 digits is valid JSON) is refused without the cost of their product."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_SHAPE_DIMS:
        raise InvalidInput(f'"shape" must be a list of 1 to {MAX_SHAPE_DIMS} dimensions')
    for d in value:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise InvalidInput('"shape" must be a list of dimensions (integers, 0 or more)')
    if any(d > limits.max_texts_per_request for d in value):
        raise TooManyTexts(f'a dimension of "shape" is over the limit of {limits.max_texts_per_request} texts')
    n = math.prod(value)  # at most max_texts_per_request ** MAX_SHAPE_DIMS: small integers
    if n > limits.max_texts_per_request:
        raise TooManyTexts(f'"shape" holds {n} elements; the limit is {limits.max_texts_per_request}')
    return n


def _flatten(data: Any, n: int, limits: Limits) -> list[Any]:
    """The elements of tensor data, nested in rows (row-major) or flat, when they are `n`;
    else RequestError. The walk stops at the first element past `n`, at a nesting deeper
    than a shape can have, or after as many lists as data of an allowed shape can hold,
    so its work is bounded by the limits, not by what the client sent."""
    if not isinstance(data, list):
        data = [data]
    max_lists = (MAX_SHAPE_DIMS + 1) * max(1, limits.max_texts_per_request)
    mismatch = InvalidInput(f'"shape" holds {n} elements but "data" has more')
    out: list[Any] = []
    lists = 0
    stack = [iter(data)]
    while stack:  # no recursion: depth is whatever the client sent, up to the bound
        for item in stack[-1]:
            if isinstance(item, list):
                lists += 1
                if len(stack) >= MAX_SHAPE_DIMS or lists > max_lists:
                    raise InvalidInput(
                        f'"data" nests deeper or wider than a shape of at most {MAX_SHAPE_DIMS} dimensions holds',
                    )
                stack.append(iter(item))
                break
            if len(out) == n:
                raise mismatch
            out.append(item)
        else:
            stack.pop()
    return out


def _parse_v2(value: Any, limits: Limits) -> tuple[ParsedRequest, Envelope]:
    body = _object(value, '{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["..."]}]}')
    _unknown_fields(body, ("id", "parameters", "inputs", "outputs"), "the body")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f'"id" must be a string, not {json_type(request_id)}')
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise InvalidInput('"inputs" must be a list of one tensor, named "text"')
    tensor = _object(inputs[0], '{"name": "text", "datatype": "BYTES", "shape": [n], "data": [...]}')
    _unknown_fields(tensor, ("name", "datatype", "shape", "data", "parameters"), '"inputs"[0]')
    if tensor.get("name") != "text":
        raise InvalidInput('the input tensor must be named "text"')
    if tensor.get("datatype") != "BYTES":
        raise InvalidInput('the "text" tensor\'s datatype must be "BYTES"')
    n = _shape(tensor.get("shape"), limits)
    data = _flatten(tensor.get("data"), n, limits)
    if len(data) != n:
        raise InvalidInput(f'"shape" holds {n} elements but "data" has {len(data)}')
    _count(n, limits, 'the "text" tensor')
    texts = tuple(check_text(t, f'"data"[{i}]', limits) for i, t in enumerate(data))
    outputs = body.get("outputs")
    if outputs is None:
        names = V2_OUTPUTS
    else:
        # each output once at most: the answer holds a tensor per name asked for
        if (
            not isinstance(outputs, list)
            or not 1 <= len(outputs) <= len(V2_OUTPUTS)
            or not all(isinstance(o, dict) for o in outputs)
        ):
            raise InvalidInput('"outputs" must be a list of {"name": ...}, each output once')
        names = tuple(o.get("name") for o in outputs)
        if not all(isinstance(name, str) and name in V2_OUTPUTS for name in names) or len(set(names)) != len(names):
            raise InvalidInput(f"the outputs are {', '.join(V2_OUTPUTS)}, each asked for once")
    return ParsedRequest(texts, True), Envelope(OIP_V2, request_id, names)


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
