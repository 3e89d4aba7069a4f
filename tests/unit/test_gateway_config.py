"""The rendered nginx config against the table it is rendered from (gateway/refusals.py)
and the settings: every refusal nginx can answer with is a body of the table, every
error_page names a file the gateway writes, and the limits are the settings'. No nginx
runs here (tests/integration/test_gateway_availability.py runs it)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.nginx import (
    ERROR_PAGES,
    REFUSALS_DIR,
    GatewaySettings,
    Node,
    in_flight_per_key,
    open_total,
    refusal_files,
    render,
)
from gateway.refusals import SHAPES, refusals
from gateway.routes import ROUTES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path):
    settings = GatewaySettings(18000, {"alice": "alice-key-0123456789"})
    nodes = [Node(tmp_path / "node1", 8080), Node(tmp_path / "node2", 8090)]
    return settings, render(settings, nodes, tmp_path / "gateway")


def test_every_inline_refusal_is_a_body_of_the_table(config):
    settings, text = config
    bodies = {
        (r.status, r.body(shape).strip())
        for r in refusals(settings.model, settings.max_body).values()
        for shape in SHAPES
    }
    returned = re.findall(r"return (\d+) '(.*?)\\n';", text)
    assert returned, "no refusal returned inline"
    for status, body in returned:
        assert (int(status), body) in bodies, (status, body)


def test_every_error_page_names_a_file_the_gateway_writes(config):
    settings, text = config
    files = set(refusal_files(settings.model, settings.max_body))
    pages = re.findall(rf"error_page ([\d ]+) (?:=\d+ )?/{REFUSALS_DIR}/(\S+)/(\w+)\.json;", text)
    assert pages
    for statuses, shape, name in pages:
        shapes = SHAPES if shape == "$refusal_shape" else (shape,)
        for each in shapes:
            assert f"{each}/{name}.json" in files, (statuses, shape, name)
        refusal = refusals(settings.model, settings.max_body)[name]
        for status in map(int, statuses.split()):
            answered = re.search(rf"error_page {statuses} =(\d+) /{REFUSALS_DIR}/{re.escape(shape)}/{name}\.", text)
            assert refusal.status == (int(answered[1]) if answered else status), (status, name)


def test_each_kind_of_location_answers_every_status_it_can_produce_with_its_own_refusal():
    table = refusals("sentiment", "1m")
    for kind, pages in ERROR_PAGES.items():
        for name in pages.values():
            assert name in table, (kind, name)


def test_refusal_files_are_json_of_their_status(tmp_path):
    for name, body in refusal_files("sentiment", "1m").items():
        value = json.loads(body)
        shape = name.split("/")[0]
        if shape == "native":
            assert set(value) == {"code", "type", "message"}
        else:
            assert set(value) == {"error"} and ": " in value["error"]


def test_routes_are_matched_by_case_sensitive_regular_expressions_only(config):
    _, text = config
    block = text[text.index("map $uri $route {") :]
    block = block[: block.index("}")]
    entries = [line.split()[0] for line in block.splitlines()[1:] if line.strip() and not line.strip().startswith("#")]
    entries = [e for e in entries if e != "default"]
    assert entries and all(e.startswith('"~^') for e in entries), entries


def test_the_limits_are_the_settings(config):
    settings, text = config
    assert f"limit_conn connections_per_address {settings.conn_per_address};" in text
    assert f"limit_conn open_per_key {settings.conn_per_key};" in text
    assert f"limit_conn open_total {open_total(settings, 2)};" in text
    assert open_total(settings, 2) == 2 * settings.in_flight_per_node + settings.conn_per_key
    per_key = in_flight_per_key(settings)
    assert 1 <= per_key < settings.in_flight_per_node
    # per node: its server, its explanations, and its explanations during a key rotation
    assert text.count(f"limit_conn in_flight_per_node {settings.in_flight_per_node};") == 2 * 3  # 2 nodes
    assert text.count(f"limit_conn in_flight_per_key {per_key};") == 2 * 3
    assert text.count("limit_conn explanations_per_node 1;") == 2 * 2
    # the probes count against none of a caller's or a node's limits
    for probe in ("/healthz", "/readyz", "/v2/health/live"):
        location = text[text.index(f"location = {probe} {{") :]
        location = location[: location.index("\n        }\n")]
        assert "open_per_key" not in location and "in_flight" not in location, probe
        assert "probes_per_address" in location and "per_address" in location


def test_the_gateway_doc_lists_every_refusal():
    """docs/gateway.md's table of the gateway's own answers is the table in refusals.py."""
    doc = (ROOT / "docs" / "gateway.md").read_text()
    rows = set(re.findall(r"^\| (\d{3}) \| `(\w+)` \|", doc, re.M))
    table = {(str(r.status), r.type) for r in refusals("sentiment", "1m").values()}
    assert rows == table, (rows - table, table - rows)


def test_what_a_node_is_sent_is_the_handlers_contract(config):
    """Every location that proxies to a node's server block sets the handler's headers
    (handlers/contract.py) from the gateway's own variables and clears TorchServe's, and
    the protocol of each route is the contract's."""
    import contract  # handlers/contract.py, as the handler imports it

    _, text = config
    proxying = text.count("proxy_pass http://nodes")
    assert proxying >= 3
    for header, value in ((contract.PROTOCOL_HEADER, "$protocol"), (contract.SENT_AT_HEADER, "$msec")):
        assert text.count(f"proxy_set_header {header} {value};") == proxying, header
    for header in contract.TORCHSERVE_HEADERS:
        assert text.count(f'proxy_set_header {header} "";') == proxying, header
    protocol_map = re.search(r"map \$route \$protocol \{(.*?)\}", text, re.S)
    assert protocol_map is not None
    entries = dict(re.findall(r"^\s*(\S+) (\S+);$", protocol_map.group(1), re.M))
    assert entries == {"default": '""', **{r.name: r.protocol for r in ROUTES if r.protocol != contract.NATIVE}}
    assert re.search(r"map \$http_sentiment_protocol \$refusal_shape", text)


def test_the_request_id_is_the_contracts_wherever_it_is_read(config):
    """The gateway's map takes a client's ID by the contract's pattern, sends it on in the
    contract's header and parameter; log4j2.xml (which cannot be rendered) moves exactly
    that parameter, of the pattern's alphabet, out of TorchServe's withheld path."""
    import contract

    _, text = config
    variable = "$http_" + contract.REQUEST_ID_HEADER.lower().replace("-", "_")
    assert f'"~^{contract.REQUEST_ID_PATTERN}$" {variable};' in text
    assert f'more_set_headers "{contract.REQUEST_ID_HEADER}: $rid";' in text
    proxying = text.count("proxy_pass http://nodes/")
    assert text.count(f"?{contract.REQUEST_ID_PARAM}=$rid;") == proxying >= 3
    assert text.count(f"proxy_set_header {contract.REQUEST_ID_HEADER} $rid;") == proxying
    log4j2 = (ROOT / "log4j2.xml").read_text()
    alphabet = re.fullmatch(r"(\[[^\]]+\])\{\d+,\d+\}", contract.REQUEST_ID_PATTERN)
    assert alphabet is not None
    assert f"{contract.REQUEST_ID_PARAM}=({alphabet[1]}+)" in log4j2
