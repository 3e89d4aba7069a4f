"""The Open Inference Protocol v2: {"inputs": [...]} -> {"outputs": [...]}. The request's
parser (one BYTES tensor named "text", its shape checked before anything is built from
it); protocols.render writes the answer."""

from __future__ import annotations

import math
from typing import Any

from bodies import Limits, ParsedRequest, check_text, count_texts, json_object, json_type, no_unknown_fields
from errors import InvalidInput, TooManyTexts

OUTPUTS = ("label", "score", "scores")  # the tensors an answer can hold, in this order by default


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


def parse(value: Any, limits: Limits) -> tuple[ParsedRequest, str | None, tuple[str, ...]]:
    """A v2 body's texts, its "id" and the outputs it asks for, or RequestError."""
    body = json_object(value, '{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["..."]}]}')
    no_unknown_fields(body, ("id", "parameters", "inputs", "outputs"), "the body")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f'"id" must be a string, not {json_type(request_id)}')
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise InvalidInput('"inputs" must be a list of one tensor, named "text"')
    tensor = json_object(inputs[0], '{"name": "text", "datatype": "BYTES", "shape": [n], "data": [...]}')
    no_unknown_fields(tensor, ("name", "datatype", "shape", "data", "parameters"), '"inputs"[0]')
    if tensor.get("name") != "text":
        raise InvalidInput('the input tensor must be named "text"')
    if tensor.get("datatype") != "BYTES":
        raise InvalidInput('the "text" tensor\'s datatype must be "BYTES"')
    n = _shape(tensor.get("shape"), limits)
    data = _flatten(tensor.get("data"), n, limits)
    if len(data) != n:
        raise InvalidInput(f'"shape" holds {n} elements but "data" has {len(data)}')
    count_texts(n, limits, 'the "text" tensor')
    texts = tuple(check_text(t, f'"data"[{i}]', limits) for i, t in enumerate(data))
    outputs = body.get("outputs")
    if outputs is None:
        names = OUTPUTS
    else:
        # each output once at most: the answer holds a tensor per name asked for
        if (
            not isinstance(outputs, list)
            or not 1 <= len(outputs) <= len(OUTPUTS)
            or not all(isinstance(o, dict) for o in outputs)
        ):
            raise InvalidInput('"outputs" must be a list of {"name": ...}, each output once')
        names = tuple(o.get("name") for o in outputs)
        if not all(isinstance(name, str) and name in OUTPUTS for name in names) or len(set(names)) != len(names):
            raise InvalidInput(f"the outputs are {', '.join(OUTPUTS)}, each asked for once")
    return ParsedRequest(texts, True), request_id, names
