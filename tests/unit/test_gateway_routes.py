"""The route table (gateway/routes.py) against the config rendered from it: each route's
example path is named that route by the config's `map $uri $route`, and reaches, by
nginx's own rules for choosing a location, a location that answers it as the table says
(its methods, whether it needs a caller, its refusals' shape, where its answer comes
from). The fixed answers the gateway writes are exactly the routes that have them. No
nginx runs here: tests/integration/test_gateway*.py send the same routes to a real one."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from common import contract
from gateway.nginx import GatewaySettings, Node, readiness_answers, render, static_answers
from gateway.refusals import SHAPES
from gateway.routes import BY_NAME, NODE, POST, READY, ROUTES, STATIC

MODEL = "sentiment"


@dataclass(frozen=True)
class Location:
    modifier: str  # "=", "^~", "~", "~*" or "" (a prefix)
    pattern: str
    body: str  # between its braces, nested blocks included


def blocks(text: str, start: int) -> str:
    """The text between the brace at `start` and the one that closes it."""
    depth = 0
    for at in range(start, len(text)):
        if text[at] == "{":
            depth += 1
        elif text[at] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : at]
    raise ValueError("unbalanced braces")


def api_server(config: str) -> str:
    """The body of the API's server block (the one on api.sock)."""
    for match in re.finditer(r"^    server \{", config, re.M):
        body = blocks(config, match.end() - 1)
        if re.search(r"listen unix:\S*api\.sock", body):
            return body
    raise AssertionError("no API server block")


def locations(server: str) -> list[Location]:
    """The server's own locations (not those nested in them), in order."""
    found = []
    at = 0
    pattern = re.compile(r"^        location (?:(=|\^~|~\*?) )?(\S+) \{", re.M)
    while (match := pattern.search(server, at)) is not None:
        body = blocks(server, match.end() - 1)
        found.append(Location(match[1] or "", match[2], body))
        at = match.end() + len(body)
    return found


def choose(found: list[Location], path: str) -> Location:
    """The location nginx picks for `path`: an exact match; else the longest prefix if it
    is ^~; else the first regular expression that matches, in order; else the longest
    prefix. Named locations (@...) are reached by name only."""
    for loc in found:
        if loc.modifier == "=" and loc.pattern == path:
            return loc
    prefixes = [loc for loc in found if loc.modifier in ("", "^~") and path.startswith(loc.pattern)]
    longest = max(prefixes, key=lambda loc: len(loc.pattern), default=None)
    if longest is not None and longest.modifier == "^~":
        return longest
    for loc in found:
        flags = re.IGNORECASE if loc.modifier == "~*" else 0
        if loc.modifier in ("~", "~*") and re.search(loc.pattern, path, flags):
            return loc
    assert longest is not None, path
    return longest


def route_of(config: str, path: str) -> str:
    """What `map $uri $route` names `path`: its first matching entry, in order."""
    block = blocks(config, config.index("map $uri $route {") + len("map $uri $route "))
    for regex, name in re.findall(r'^\s*"~(\S+)" (\S+);$', block, re.M):
        if re.search(regex, path):
            return name
    return ""


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("routes")
    settings = GatewaySettings(18000, {"alice": "alice-key-0123456789"}, model=MODEL)
    return render(settings, [Node(tmp / "node1", 8080)], tmp / "gateway")


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_each_routes_example_is_named_that_route(config, route):
    assert route_of(config, route.path_of(MODEL)) == route.name


@pytest.mark.parametrize(
    "path",
    [
        "/predictions/SENTIMENT",
        "/predictions/sentimentx",
        "/predictions/sentiment/",
        "/v1/models/sentiment:Predict",
        "/v2/models/sentiment/infer/",
        "/V2",
        "/readyz/x",
        "/explanations/sentiment/1.0",
    ],
)
def test_near_misses_are_no_route(config, path):
    assert route_of(config, path) == ""


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_each_route_reaches_a_location_that_answers_it_as_the_table_says(config, route):
    loc = choose(locations(api_server(config)), route.path_of(MODEL))
    body = loc.body
    # the methods: anything else is 405 with their Allow header
    allow = "POST" if route.methods == POST else '"GET, HEAD"'
    assert f"add_header Allow {allow} always;" in body, (route.name, loc.pattern)
    # a caller, or none: an unknown one goes to the 401 of the route's shape
    assert ('if ($client = "")' in body) == route.caller, (route.name, loc.pattern)
    if route.caller:
        assert f"rewrite ^ /_unauthorized/{route.shape} last;" in body
    # every refusal in the location is in the route's shape
    other = next(s for s in SHAPES if s != route.shape)
    assert f"/refusals/{route.shape}/" in body and f"/refusals/{other}/" not in body, route.name
    returned = re.findall(r"return \d+ '(\{.*?)';", body)
    assert returned, route.name
    assert all(('"code"' in b) == (route.shape == "native") for b in returned), route.name
    # where the answer comes from
    if route.answer == NODE:
        assert "proxy_pass http://nodes/" in body, route.name
    elif route.answer == STATIC:
        assert f"rewrite ^ /{route.name}.json break;" in body, route.name
        assert "proxy_pass" not in body
    else:
        assert route.answer == READY
        assert re.search(rf"try_files /ready/({route.name}|\$route)\.json ", body), route.name
        assert "proxy_pass" not in body


def test_the_fixed_answers_are_the_routes_that_have_them():
    assert set(static_answers(MODEL)) == {r.name for r in ROUTES if r.answer == STATIC}
    assert set(readiness_answers(MODEL)) == {r.name for r in ROUTES if r.answer == READY}


def test_each_protocol_is_some_routes_and_only_node_routes_name_one():
    assert {r.protocol for r in ROUTES} == set(contract.PROTOCOLS)
    assert all(r.answer == NODE for r in ROUTES if r.protocol != contract.NATIVE)
    assert all(r.shape == "protocol" for r in ROUTES if r.protocol != contract.NATIVE)


def test_route_names_are_unique_and_plain():
    assert len(BY_NAME) == len(ROUTES)
    assert all(re.fullmatch(r"[a-z0-9_]+", name) for name in BY_NAME)
