"""The contract between the gateway and the node's handler (the headers the gateway sets,
the protocol of each route), for the gateway's side: handlers/contract.py is the one
source, a module the model archive packs beside the handler, where common/ is not; this
loads that same file."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from common.paths import HANDLERS


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sentiment_contract", HANDLERS / "contract.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_contract = _load()

# The gateway's API port: its default (python -m gateway, make serve, the clients' default
# URL) and the manifests' (deployment.yaml's gateway `--port` and `http` port, checked by
# tests/unit/test_testbed_pod.py)
GATEWAY_PORT = 8000

PROTOCOL_HEADER: str = _contract.PROTOCOL_HEADER
SENT_AT_HEADER: str = _contract.SENT_AT_HEADER
REQUEST_ID_HEADER: str = _contract.REQUEST_ID_HEADER
REQUEST_ID_PATTERN: str = _contract.REQUEST_ID_PATTERN
REQUEST_ID_PARAM: str = _contract.REQUEST_ID_PARAM
TORCHSERVE_HEADERS: tuple[str, ...] = _contract.TORCHSERVE_HEADERS
NATIVE: str = _contract.NATIVE
KSERVE_V1: str = _contract.KSERVE_V1
OIP_V2: str = _contract.OIP_V2
PROTOCOLS: tuple[str, ...] = _contract.PROTOCOLS
