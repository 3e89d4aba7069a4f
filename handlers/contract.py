"""What the gateway and the node's handler agree on, in one place: the headers the gateway
sets on every request it sends a node (and the handler reads), and the wire protocols a
request may be answered in (gateway/routes.py names each route's).

The handler imports this module (archive.sh packs it beside the handler); the gateway's
renderer reads this same file (common/contract.py) and writes its facts into nginx's
config; tests/unit/test_gateway_config.py checks the rendered config against it. A
client's own value of any of these headers never reaches a node."""

from __future__ import annotations

# the wire protocol to answer in (PROTOCOLS); absent: the native one
PROTOCOL_HEADER = "sentiment-protocol"
# when the gateway sent the request on, in seconds since the epoch (nginx's $msec): the
# handler's queue budget counts from it; absent (straight to TorchServe): never refused
SENT_AT_HEADER = "sentiment-sent-at"
# The request's ID: a client's X-Request-ID when it is one (REQUEST_ID_PATTERN, whole), else
# one the gateway makes (32 hex digits). The gateway returns it on every answer, logs it,
# and sends it on in this header and, so that TorchServe's access log names it too, as a
# query parameter (log4j2.xml moves it out of the path it withholds); the handler drops the
# parameter from the request and names the ID in every line it logs about the request.
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = r"[A-Za-z0-9._:-]{1,128}"
REQUEST_ID_PARAM = "request_id"
# TorchServe's own: its frontend sets them for its explanations and description APIs, so
# the gateway clears a client's
EXPLAIN_HEADER = "explain"
TORCHSERVE_HEADERS = (EXPLAIN_HEADER, "describe")

NATIVE = "native"  # {"text": ...}
KSERVE_V1 = "kserve-v1"  # {"instances": [...]} -> {"predictions": [...]}
OIP_V2 = "oip-v2"  # {"inputs": [...]} -> {"outputs": [...]}
PROTOCOLS = (NATIVE, KSERVE_V1, OIP_V2)
