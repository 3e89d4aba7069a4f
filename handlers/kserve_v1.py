"""KServe's v1 protocol: {"instances": [...]} -> {"predictions": [...]}. The request's
parser; protocols.render writes the answer."""

from __future__ import annotations

from typing import Any

from bodies import Limits, ParsedRequest, check_text, count_texts, json_object, json_type, no_unknown_fields
from errors import InvalidInput


def parse(value: Any, limits: Limits) -> ParsedRequest:
    """A v1 body's texts, or RequestError: "instances", each a text or {"text": ...}."""
    body = json_object(value, '{"instances": ["..."]}')
    no_unknown_fields(body, ("instances", "parameters"), "the body")
    instances = body.get("instances")
    if not isinstance(instances, list):
        raise InvalidInput(f'"instances" must be a list, not {json_type(instances)}')
    count_texts(len(instances), limits, '"instances"')
    texts = []
    for i, instance in enumerate(instances):
        where = f'"instances"[{i}]'
        if isinstance(instance, dict):  # {"text": "..."} per instance
            no_unknown_fields(instance, ("text",), where)
            instance, where = instance.get("text"), f'{where}["text"]'
        texts.append(check_text(instance, where, limits))
    return ParsedRequest(tuple(texts), True)
