"""The gateway's routes, in one table: each route's name (nginx's $route), its path, the
methods it takes, whether it needs a caller (a client key or token), the shape its
refusals come in, the wire protocol a node answers it in, and where its answer comes from.

gateway/nginx.py writes the config's `map $uri $route` and `map $route $protocol` from this
table, and the fixed answers of the routes that have them under their names;
tests/unit/test_gateway_routes.py sends each route's example path through the rendered
config's locations as nginx chooses them, and checks the location it reaches answers the
route as this table says."""

from __future__ import annotations

import re
from dataclasses import dataclass

from common import contract

# Where a route's answer comes from
NODE = "node"  # a TorchServe node, through the node's server block
STATIC = "static"  # a fixed file the gateway writes at start (static_answers)
READY = "ready"  # a file there only while some node is ready (the readiness poller's link)

POST = ("POST",)
GET = ("GET", "HEAD")

# Path pieces: the model's name (escaped when rendered), a version name
MODEL = "{model}"
VERSION = "[0-9A-Za-z._-]+"


@dataclass(frozen=True)
class Route:
    name: str
    path: str  # a regular expression over the whole path, {model} for the model's name
    example: str  # a path of the route, {model} for the model's name
    methods: tuple[str, ...]
    caller: bool  # a client key or token needed
    shape: str  # the refusals' shape (gateway/refusals.py SHAPES)
    answer: str  # NODE, STATIC or READY
    protocol: str = contract.NATIVE  # the protocol a node answers in (NODE routes)

    def pattern(self, model: str) -> str:
        """The route's path as a regular expression for `model` (anchored at both ends)."""
        return "^" + self.path.replace(MODEL, re.escape(model)) + "$"

    def path_of(self, model: str) -> str:
        return self.example.replace(MODEL, model)


ROUTES = (
    Route("predictions", f"/predictions/{MODEL}(/{VERSION})?", f"/predictions/{MODEL}", POST, True, "native", NODE),
    Route("explanations", f"/explanations/{MODEL}", f"/explanations/{MODEL}", POST, True, "native", NODE),
    Route("healthz", "/healthz", "/healthz", GET, False, "native", STATIC),
    Route("readyz", "/readyz", "/readyz", GET, False, "native", READY),
    # KServe v1 and the Open Inference Protocol v2 (docs/kserve.md)
    Route(
        "v1_predict",
        f"/v1/models/{MODEL}:predict",
        f"/v1/models/{MODEL}:predict",
        POST,
        True,
        "protocol",
        NODE,
        contract.KSERVE_V1,
    ),
    Route("v1_model", f"/v1/models/{MODEL}", f"/v1/models/{MODEL}", GET, False, "protocol", READY),
    Route(
        "v2_infer",
        f"/v2/models/{MODEL}(/versions/{VERSION})?/infer",
        f"/v2/models/{MODEL}/versions/1.0/infer",
        POST,
        True,
        "protocol",
        NODE,
        contract.OIP_V2,
    ),
    Route(
        "v2_model",
        f"/v2/models/{MODEL}(/versions/{VERSION})?",
        f"/v2/models/{MODEL}",
        GET,
        True,
        "protocol",
        STATIC,
    ),
    Route(
        "v2_model_ready",
        f"/v2/models/{MODEL}(/versions/{VERSION})?/ready",
        f"/v2/models/{MODEL}/ready",
        GET,
        False,
        "protocol",
        READY,
    ),
    Route("v2_live", "/v2/health/live", "/v2/health/live", GET, False, "protocol", STATIC),
    Route("v2_ready", "/v2/health/ready", "/v2/health/ready", GET, False, "protocol", READY),
    Route("v2_server", "/v2", "/v2", GET, False, "protocol", STATIC),
)
BY_NAME = {route.name: route for route in ROUTES}


def route_map(model: str) -> str:
    """The entries of nginx's `map $uri $route`: each a case-sensitive regular expression
    (a map's plain strings ignore case)."""
    return "\n".join(f'        "~{route.pattern(model)}" {route.name};' for route in ROUTES)


def protocol_map() -> str:
    """The body of nginx's `map $route $protocol`: no header (the native protocol) but for
    the routes a node answers in another."""
    others = [f"        {r.name} {r.protocol};" for r in ROUTES if r.protocol != contract.NATIVE]
    return "\n".join(['        default "";', *others])
