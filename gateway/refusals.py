"""Every answer nginx itself gives instead of a node's: its status, its error type and
its message, in one table. gateway/nginx.py writes each as a file in both shapes the
routes answer in (the service's own {"code", "type", "message"}, and KServe v1 / OIP v2's
{"error": "<type>: <message>"}) and points nginx's error_page at those files, so that
every status nginx can produce is JSON and each body is written once, here."""

from __future__ import annotations

import json
from dataclasses import dataclass

# The shapes, by the name the config's error_page paths use: native routes, and the
# KServe v1 / OIP v2 routes (their probes and metadata included).
SHAPES = ("native", "protocol")
# Statuses answered with Retry-After: 1 (the client may come back in a second)
RETRY_AFTER = (429, 503)


@dataclass(frozen=True)
class Refusal:
    status: int
    type: str
    message: str

    def body(self, shape: str) -> str:
        if shape == "native":
            value: dict[str, object] = {"code": self.status, "type": self.type, "message": self.message}
        elif shape == "protocol":
            value = {"error": f"{self.type}: {self.message}"}
        else:
            raise ValueError(f"shape must be one of {SHAPES}")
        return json.dumps(value) + "\n"


def refusals(model: str, max_body: str) -> dict[str, Refusal]:
    """By name: the file name each is written under (<name>.json)."""
    return {
        "query_not_allowed": Refusal(
            400, "QueryNotAllowed", "the API takes no query string; send the key as Authorization: Bearer <key>"
        ),
        "invalid_path_bytes": Refusal(
            400, "InvalidPath", "a path is letters, digits and . _ - : / only: no percent-encoding, no parameters"
        ),
        "invalid_path_segments": Refusal(400, "InvalidPath", "no empty or dot segments in a path"),
        "bad_request": Refusal(400, "BadRequest", "the request could not be parsed"),
        "header_too_large": Refusal(431, "HeaderTooLarge", "a header line is over 8 KiB, or all of them over 32 KiB"),
        "unauthorized": Refusal(
            401, "Unauthorized", "missing or unknown gateway key or token: send Authorization: Bearer <key>"
        ),
        "not_found": Refusal(
            404,
            "NotFound",
            f"the gateway serves POST /predictions/{model}[/<version>], POST /explanations/{model}, "
            "the KServe v1 and OIP v2 routes, GET /healthz and GET /readyz",
        ),
        "post_only": Refusal(405, "MethodNotAllowed", "this route takes POST"),
        "get_only": Refusal(405, "MethodNotAllowed", "this route takes GET or HEAD"),
        "method_not_allowed": Refusal(405, "MethodNotAllowed", "the API takes POST and GET only"),
        "too_large": Refusal(413, "RequestTooLarge", f"the body is over {max_body}"),
        "no_body": Refusal(413, "RequestTooLarge", "probes and metadata take no body"),
        "uri_too_long": Refusal(414, "URITooLong", "the request line is over 8 KiB"),
        "unsupported_media_type": Refusal(
            415, "UnsupportedMediaType", "the gateway takes application/json or text/plain bodies"
        ),
        "json_only": Refusal(415, "UnsupportedMediaType", "this API takes application/json"),
        "too_many": Refusal(
            429,
            "TooManyRequests",
            "over the request rate or the requests in progress allowed to this key: slow down and retry",
        ),
        "too_many_failures": Refusal(
            429, "TooManyRequests", "too many failed authentications from this address: retry later"
        ),
        "too_many_probes": Refusal(429, "TooManyRequests", "over the probe rate of this address: slow down"),
        "node_busy": Refusal(
            429,
            "TooManyRequests",
            "the node has as many requests in progress as it can answer in time, or this key its share of them: "
            "retry shortly",
        ),
        "explain_busy": Refusal(
            429,
            "TooManyRequests",
            "every node tried is running an explanation (one at a time each): retry shortly",
        ),
        "internal": Refusal(500, "InternalError", "the gateway failed on this request"),
        "not_implemented": Refusal(501, "NotImplemented", "unsupported Transfer-Encoding"),
        "no_node": Refusal(502, "NodeUnavailable", "no TorchServe node answered"),
        "not_ready": Refusal(503, "NotReady", "no node has the model ready"),
        "draining": Refusal(503, "NotReady", "this gateway is stopping"),
        "http_version": Refusal(505, "HTTPVersionNotSupported", "the gateway speaks HTTP/1.0 and HTTP/1.1"),
        # the metrics listener's own (--metrics-port): it serves GET /metrics and nothing else
        "metrics_not_found": Refusal(404, "NotFound", "the metrics port serves GET /metrics only"),
        "metrics_get_only": Refusal(405, "MethodNotAllowed", "the metrics port takes GET /metrics only"),
        "metrics_no_body": Refusal(413, "RequestTooLarge", "a scrape takes no body"),
        "too_many_scrapes": Refusal(429, "TooManyRequests", "over the scrape rate of this address: slow down"),
    }
