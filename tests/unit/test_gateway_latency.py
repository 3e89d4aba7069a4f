"""gateway/latency.py: the datagrams nginx sends parsed (and what is not a whole line of
the format refused), the histogram's exposition in Prometheus' text format (buckets
cumulative, +Inf equal to the count, labels bounded), the collector over a real unix
datagram socket, and the latency SLO's threshold the same in the exporter and the rules."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess

import pytest
import yaml

from clients.metrics import parse_samples
from common.paths import ROOT
from gateway.latency import (
    BUCKETS,
    CODES,
    METRIC,
    PREDICTION_ROUTES,
    SLO_THRESHOLD_S,
    Histogram,
    LatencyCollector,
    le,
    parse,
)
from gateway.routes import ROUTES
from helpers import poll

# what nginx 1.22 sends for `access_log syslog:server=unix:...,nohostname latency;`
HEADER = b"<190>Dec  4 20:54:41 nginx: "


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"200 0.012 route=predictions", ("predictions", "200", 0.012)),
        (b"429 0.000 route=v2_infer", ("v2_infer", "429", 0.0)),
        (b"404 0.001 route=", ("none", "404", 0.001)),  # no route: refused before one was known
        (b"502 60.004 route=v1_predict", ("v1_predict", "502", 60.004)),
        (b"200 0.003 route=metrics", ("other", "200", 0.003)),  # not a route of the table
        (b"418 0.003 route=healthz", ("healthz", "other", 0.003)),  # not a status of CODES
        (b"200 0.012 route=predictions\n", ("predictions", "200", 0.012)),
    ],
)
def test_a_datagram_is_parsed_with_bounded_labels(message, expected):
    assert parse(HEADER + message) == expected


@pytest.mark.parametrize(
    "datagram",
    [
        b"200 0.012 route=predictions",  # no syslog header
        HEADER + b"200 0.012",  # cut short
        HEADER + b"200 0.01",  # nginx writes milliseconds: a truncated number
        HEADER + b"200 0.012 route=predictions extra",
        HEADER + b"2000 0.012 route=predictions",
        HEADER + b"200 -0.012 route=predictions",
        HEADER + b"200 0.012 route=/predictions/sentiment",  # never a path
        HEADER + b"\xff\xfe",
        b"",
    ],
)
def test_anything_but_a_whole_line_is_refused(datagram):
    assert parse(datagram) is None


def test_the_exposition_is_cumulative_with_inf_equal_to_the_count():
    histogram = Histogram()
    observed = [0.001, 0.005, 0.0051, 0.2, 0.25, 0.251, 3.0, 11.0, 99.0]
    for seconds in observed:
        histogram.observe("predictions", "200", seconds)
    histogram.observe("none", "404", 0.0)
    text = histogram.exposition()
    values = parse_samples(text)
    labels = 'route="predictions",code="200"'
    buckets = [values[f'{METRIC}_bucket{{{labels},le="{le(b)}"}}'] for b in BUCKETS]
    inf = values[f'{METRIC}_bucket{{{labels},le="+Inf"}}']
    assert buckets == sorted(buckets)  # cumulative: never falls
    assert buckets == [sum(1 for s in observed if s <= bound) for bound in BUCKETS]  # le: at most the bound
    assert inf == values[f"{METRIC}_count{{{labels}}}"] == len(observed)
    assert values[f"{METRIC}_sum{{{labels}}}"] == pytest.approx(sum(observed))
    assert values[f'{METRIC}_count{{route="none",code="404"}}'] == 1
    # the SLO's routes exist before their first request (a rate from the first scrape on)
    for route in PREDICTION_ROUTES:
        expected = len(observed) if route == "predictions" else 0
        assert values[f'{METRIC}_count{{route="{route}",code="200"}}'] == expected
    assert f"# TYPE {METRIC} histogram" in text and text.endswith("\n")


def test_the_exposition_passes_promtool():
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: apt-get install prometheus (make test does)")
    histogram = Histogram()
    for code in ("200", "429", "other"):
        histogram.observe("v2_infer", code, 0.07)
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=histogram.exposition(), capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_labels_are_bounded():
    assert set(PREDICTION_ROUTES) <= {route.name for route in ROUTES}
    assert all(100 <= code <= 599 for code in CODES) and len(CODES) < 32


def test_the_slo_threshold_is_a_bucket_bound_and_the_rules_select_that_bucket():
    assert SLO_THRESHOLD_S in BUCKETS and list(BUCKETS) == sorted(BUCKETS)
    rules = (ROOT / "monitoring" / "prometheusrule.yaml").read_text()
    groups = yaml.safe_load(rules)["spec"]["groups"]
    latency = [r for g in groups if g["name"] == "sentiment.slo.latency" for r in g["rules"]]
    assert latency, "no latency SLO group"
    for rule in latency:
        assert set(re.findall(r'le="([^"]*)"', rule["expr"])) == {le(SLO_THRESHOLD_S)}, rule["record"]
        assert set(re.findall(r'route=~"([^"]*)"', rule["expr"])) == {"|".join(PREDICTION_ROUTES)}, rule["record"]
    # and the SLO's statement and the alerts' words name the same threshold
    assert rules.count(f"{SLO_THRESHOLD_S:g} s") >= 3


def test_the_collector_counts_what_arrives_on_its_socket(tmp_path):
    collector = LatencyCollector(tmp_path, tmp_path / "metrics.txt", interval=0.05).start()
    try:
        # written at once, before any request: Prometheus never scrapes a missing file
        first = parse_samples((tmp_path / "metrics.txt").read_text())
        assert first[f'{METRIC}_count{{route="v2_infer",code="200"}}'] == 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            for datagram in (
                HEADER + b"200 0.012 route=predictions",
                HEADER + b"200 0.300 route=predictions",
                HEADER + b"401 0.000 route=predictions",
                b"garbage",
            ):
                sender.sendto(datagram, str(tmp_path / "latency.sock"))
        values = poll(
            lambda: parse_samples((tmp_path / "metrics.txt").read_text()),
            lambda v: v.get("sentiment_gateway_latency_lines_invalid_total") == 1,
        )
        ok = 'route="predictions",code="200"'
        assert values[f"{METRIC}_count{{{ok}}}"] == 2
        assert values[f'{METRIC}_bucket{{{ok},le="0.25"}}'] == 1
        assert values[f'{METRIC}_count{{route="predictions",code="401"}}'] == 1
    finally:
        collector.stop()
    assert not (tmp_path / "latency.sock").exists()
