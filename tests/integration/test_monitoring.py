"""Every PromQL expression of the recording rules, the alerts, the dashboard and the
prometheus-adapter rule, against a real Prometheus scraping a real TorchServe, and the
gateway in front of it (its latency histogram), under load through the gateway (the
kube-state-metrics series of two alerts and a dashboard panel are absent here: those must
only parse); and the autoscaling signal measured rising with load and falling back after it."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
import requests
import yaml

from common.net import free_port
from common.paths import ROOT
from helpers import gateway_in_front, poll
from testbed.prometheus import LocalPrometheus, rule_groups
from training.tweets import split_tweets

# Prometheus through idle, 45 s of load and up to two minutes after it (two minutes here)
pytestmark = pytest.mark.timeout(600)

SIGNAL = "sentiment:queued_requests:rate1m"


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((ROOT / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    # Grafana's variables as it would fill them for this one "pod"
    return [e.replace("$namespace", "local").replace("$pod", ".*").replace("$__rate_interval", "1m") for e in exprs]


def adapter_expressions() -> list[str]:
    rules = yaml.safe_load((ROOT / "monitoring" / "prometheus-adapter-rules.yaml").read_text())["rules"]
    return [
        r["metricsQuery"]
        .replace("<<.Series>>", r["seriesQuery"].split("{")[0])
        .replace("<<.LabelMatchers>>", 'namespace="local",pod="local"')
        .replace("<<.GroupBy>>", "pod")
        for r in rules
    ]


CLIENTS = {"load": "load-key-0123456789abcdef"}


def load(server, gateway, stop: threading.Event, concurrency: int = 16):
    """Closed-loop clients through the gateway: held-out tweets, one request in ten
    malformed, one in a hundred a malformed form straight to TorchServe (a 500 from its
    frontend: the gateway refuses forms), so every counter exists."""
    _, heldout = split_tweets()
    direct = server.url("inference", "/predictions/sentiment")
    url = gateway.url("/predictions/sentiment")
    auth = {"Authorization": f"Bearer {CLIENTS['load']}"}
    direct_auth = {"Authorization": f"Bearer {server.keys['inference']}"}

    def client(n):
        session, i = requests.Session(), n
        while not stop.is_set():
            if i % 100 == 7:
                session.post(
                    direct,
                    data=b"text=%ZZ",
                    headers={**direct_auth, "Content-Type": "application/x-www-form-urlencoded"},
                )
            elif i % 10 == 3:
                session.post(url, data=b'{"text": ', headers={**auth, "Content-Type": "application/json"})
            else:
                session.post(url, json={"text": heldout[i % len(heldout)].text}, headers=auth)
            i += concurrency

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(concurrency)]
    for t in threads:
        t.start()
    return threads


def signal_value(prom) -> float:
    result = prom.query(SIGNAL)
    return float(result[0]["value"][1]) if result else float("nan")


@pytest.fixture(scope="module")
def loaded(server, tmp_path_factory):
    """Prometheus with the rules, scraping the shared server every second, through idle,
    45 s of load and until the signal has fallen after it (two minutes at most: the
    1-minute rate window passes); the signal sampled all along."""
    with (
        gateway_in_front(server, tmp_path_factory.mktemp("gateway"), CLIENTS, metrics_port=free_port()) as gateway,
        LocalPrometheus(
            tmp_path_factory.mktemp("prometheus"),
            {"local": server.ports["metrics"]},
            gateway_targets={"local": gateway.settings.metrics_port},
        ) as prom,
    ):
        # one request, as a readiness probe would send, so that TorchServe's counters exist
        requests.post(
            server.url("inference", "/predictions/sentiment"),
            json={"text": "probe"},
            headers={"Authorization": f"Bearer {server.keys['inference']}"},
            timeout=60,
        )
        # idle: once Prometheus has the signal at all (two scrapes make a rate)
        samples = {"idle": poll(lambda: signal_value(prom), until=lambda v: not math.isnan(v), timeout=60, interval=1)}
        stop = threading.Event()
        threads = load(server, gateway, stop)
        peak, started = 0.0, time.monotonic()
        while time.monotonic() - started < 45:
            time.sleep(5)
            peak = max(peak, signal_value(prom))
        samples["under load (max)"] = peak
        queried_under_load = {
            e: prom.query(e)
            for e in dashboard_expressions()
            + adapter_expressions()
            + [r["record"] for g in rule_groups()["groups"] for r in g["rules"] if "record" in r]
        }
        stop.set()
        for t in threads:
            t.join(timeout=60)
        samples["after the load"] = poll(
            lambda: signal_value(prom), until=lambda v: v < 0.1 * peak, timeout=120, interval=2
        )
        yield prom, queried_under_load, samples


def test_every_recorded_series_returns_data_under_load(loaded):
    _, queried, _ = loaded
    records = [r["record"] for g in rule_groups()["groups"] for r in g["rules"] if "record" in r]
    assert len(records) == 20  # 6 signals, 7 error-ratio windows, 7 slow-ratio windows
    empty = [r for r in records if not queried[r]]
    assert empty == [], f"no data for {empty}"


def test_every_alert_expression_evaluates(loaded):
    prom, _, _ = loaded
    alerts = [r for g in rule_groups()["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) == 14  # 4 burn-rate tiers for each SLO, the absent target, the HPA, 4 per-pod causes
    for alert in alerts:
        prom.query(alert["expr"])  # raises on an expression Prometheus refuses
    firing = requests.get(prom.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    assert [a for a in firing if a["state"] == "firing"] == [], "an alert fires on a healthy server"


def test_every_dashboard_and_adapter_expression_returns_data_under_load(loaded):
    _, queried, _ = loaded
    expressions = dashboard_expressions() + adapter_expressions()
    assert len(expressions) >= 14
    # kube-state-metrics' series (the replicas panel) are not here: queried, so they parse
    empty = [e for e in expressions if not queried[e] and "kube_" not in e]
    assert empty == [], f"no data for {empty}"


def test_the_autoscaling_signal_rises_with_load_and_falls_back(loaded, capsys):
    _, _, samples = loaded
    with capsys.disabled():
        print(
            "\n[monitoring] requests waiting per pod (sentiment_queued_requests): "
            + ", ".join(f"{k} {v:.2f}" for k, v in samples.items())
        )
    assert samples["under load (max)"] > 1.0
    assert samples["under load (max)"] > 10 * max(samples["idle"], 0.01)
    assert samples["after the load"] < 0.1 * samples["under load (max)"]
