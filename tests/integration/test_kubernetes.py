"""The Kubernetes manifests, checked offline: every object of every kustomization passes
kubernetes-validate --strict for the oldest and the newest Kubernetes this supports (a
kind it has no schema for is a failure, not a warning), the Prometheus Operator's objects
pass schemas written from its API reference, the alert rules pass promtool's check and
unit tests, and the properties a pod's life depends on hold: the HPA alone sets the
replica count, one pod at a time is disrupted, pods spread over nodes and zones, each
container has its own probes, and ephemeral storage is requested for what the emptyDirs
may hold. (The Deployment's pod runs for real in test_container.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from common.paths import CONFIG, ROOT, tool
from common.torchserve_files import read_properties

KUSTOMIZATIONS = [
    "deploy/kubernetes/base",
    "deploy/kubernetes/overlays/example",
    "deploy/kubernetes/overlays/local",
    "monitoring",
]
VERSIONS = ["1.25.0", "1.37.0"]  # the oldest and newest kubernetes-validate ships: both supported
CRD_SCHEMAS = {
    "ServiceMonitor": "servicemonitor.json",
    "PrometheusRule": "prometheusrule.json",
    "PodMonitor": "podmonitor.json",
}
SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
INSTANCE = "app.kubernetes.io/instance"


def kustomize(path: str) -> list[dict]:
    kubectl = tool("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing (make venv installs it into .venv/bin): it renders the kustomizations")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / path)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {path: kustomize(path) for path in KUSTOMIZATIONS}


def test_the_example_overlay_has_every_object_a_deployment_needs(rendered):
    kinds = sorted(d["kind"] for d in rendered["deploy/kubernetes/overlays/example"])
    assert kinds == sorted(
        [
            "Namespace",
            "ConfigMap",
            "ConfigMap",
            "Service",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ServiceMonitor",
            "PrometheusRule",
        ]
    )
    assert all(
        d["metadata"].get("namespace") == "sentiment"
        for d in rendered["deploy/kubernetes/overlays/example"]
        if d["kind"] != "Namespace"
    )
    assert not [d for docs in rendered.values() for d in docs if d["kind"] == "Secret"], "keys are never in the repo"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_passes_kubernetes_validate_strict(rendered, tmp_path, version):
    checked = 0
    for path, docs in rendered.items():
        for i, doc in enumerate(docs):
            if doc["kind"] in CRD_SCHEMAS:
                continue
            target = tmp_path / f"{path.replace('/', '_')}-{i}-{doc['kind']}.yaml"
            target.write_text(yaml.safe_dump(doc))
            result = subprocess.run(
                [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(target)],
                capture_output=True,
                text=True,
            )
            output = result.stdout + result.stderr
            # it warns and exits 0 on a kind it has no schema for: that is a failure here
            assert result.returncode == 0 and " passed for resource " in output, (path, doc["kind"], output)
            assert "WARN" not in output and "ERROR" not in output, (path, output)
            checked += 1
    assert checked >= 12


def test_kubernetes_validate_fails_a_wrong_field(tmp_path):
    """The validator is strict here: an unknown field in the pod spec is an error."""
    deployment = next(d for d in kustomize("deploy/kubernetes/base") if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    target = tmp_path / "broken.yaml"
    target.write_text(yaml.safe_dump(deployment))
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", VERSIONS[0], str(target)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "livenessProbes" in result.stdout + result.stderr


def test_operator_objects_match_the_schemas_written_from_its_api_reference(rendered):
    found = {}
    for doc in rendered["monitoring"]:
        if doc["kind"] in CRD_SCHEMAS:
            schema = json.loads((SCHEMAS / CRD_SCHEMAS[doc["kind"]]).read_text())
            jsonschema.validate(doc, schema)
            found[doc["kind"]] = doc
    assert set(found) == set(CRD_SCHEMAS) - {"PodMonitor"}  # the PodMonitor is KServe's (deploy/kserve)
    broken = json.loads(json.dumps(found["ServiceMonitor"]))
    broken["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads((SCHEMAS / "servicemonitor.json").read_text()))
    broken = json.loads(json.dumps(found["PrometheusRule"]))
    broken["spec"]["groups"][0]["rules"][0]["for"] = "5m"  # a recording rule has no `for`
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads((SCHEMAS / "prometheusrule.json").read_text()))


def test_the_kserve_pod_monitor_matches_its_schema_and_scrapes_torchserve_as_job_sentiment():
    monitor = yaml.safe_load((ROOT / "deploy" / "kserve" / "podmonitor.yaml").read_text())
    jsonschema.validate(monitor, json.loads((SCHEMAS / "podmonitor.json").read_text()))
    isvc = yaml.safe_load(INFERENCE_SERVICE.read_text())
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
        INSTANCE: isvc["metadata"]["labels"][INSTANCE],
    }
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    # the gateway's metrics listener: TorchServe's own metrics port is on the pod's loopback
    gateway = isvc["spec"]["predictor"]["containers"][0]
    assert gateway["name"] == "kserve-container"
    assert [p["name"] for p in gateway["ports"]] == ["http", endpoint["port"]]  # KServe routes to the first
    assert _metrics_port_arg(gateway) == _port(gateway, endpoint["port"])
    assert not _containers(isvc["spec"]["predictor"])["torchserve"].get("ports")
    assert {"action": "replace", "targetLabel": "job", "replacement": "sentiment"} in endpoint["relabelings"]
    _assert_gateway_endpoint(monitor["spec"]["podMetricsEndpoints"], endpoint["port"])
    broken = json.loads(json.dumps(monitor))
    broken["spec"]["podMetricsEndpoints"][0]["targetPort"] = 8082  # a ServiceMonitor's field
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads((SCHEMAS / "podmonitor.json").read_text()))


KSERVE_NETWORK_POLICY = ROOT / "deploy" / "kserve" / "networkpolicy.yaml"
PRODUCTION_PROFILE = ROOT / "container" / "production.properties"


def _port(container, name) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def _metrics_port_arg(container) -> int:
    args = container["args"]
    return int(args[args.index("--metrics-port") + 1])


def _check_network_policy(policy, pod_labels, gateway, api="http"):
    """In: the gateway's API port from anywhere, its metrics listener from the monitoring
    namespace only, nothing else; out: nothing. Every port it names is the gateway's."""
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["spec"]["egress"] == []
    rules = {tuple(p["port"] for p in rule["ports"]): rule.get("from") for rule in policy["spec"]["ingress"]}
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert rules == {(api,): None, ("metrics",): monitoring}, rules
    assert {p["name"] for p in gateway["ports"]} == {api, "metrics"}


def _objects(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def _pod(docs):
    return _objects(docs, "Deployment")[0]["spec"]["template"]["spec"]


def _containers(pod):
    return {c["name"]: c for c in pod["containers"]}


@pytest.mark.parametrize("path", ["deploy/kubernetes/base", "deploy/kubernetes/overlays/example"])
def test_the_hpa_alone_sets_the_replica_count(rendered, path):
    docs = rendered[path]
    (deployment,) = _objects(docs, "Deployment")
    (hpa,) = _objects(docs, "HorizontalPodAutoscaler")
    assert "replicas" not in deployment["spec"], "a replicas field beside an HPA resets it on every apply"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    up, down = hpa["spec"]["behavior"]["scaleUp"], hpa["spec"]["behavior"]["scaleDown"]
    assert {p["type"] for p in up["policies"]} >= {"Percent"} and up.get("selectPolicy", "Max") == "Max"
    assert 60 <= down["stabilizationWindowSeconds"] <= 900
    assert any(p["type"] == "Pods" and p["value"] >= 1 for p in down["policies"]), "a percentage alone can round to 0"


def test_the_hpa_queue_target_is_the_measured_one():
    """The queue target is read off bench/results/queue_signal.json: the signal at the
    measured share of saturation, below anything the signal only reaches past saturation."""
    hpa = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "base" / "hpa.yaml").read_text())
    pods = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")["pods"]
    assert pods["metric"]["name"] == "sentiment_queued_requests"
    target = float(pods["target"]["averageValue"])
    measured = json.loads((ROOT / "bench" / "results" / "queue_signal.json").read_text())
    suggested = measured["suggested_target"]
    assert 0.7 <= suggested["fraction"] <= 0.8
    assert target == pytest.approx(suggested["queued_requests"], rel=0.25, abs=0.1)
    assert target < max(s["queued_requests"] for s in measured["steps"]), "a target the signal never reaches"


def test_the_config_map_serves_the_model_as_config_properties_does(tmp_path):
    """The pod's workers and batching are the ones `make serve` runs and bench/ measured
    (config.properties' models= and the keys beside it), not a second copy that drifts."""
    config_map = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "base" / "configmap.yaml").read_text())
    (tmp_path / "pod.properties").write_text(config_map["data"]["torchserve.properties"])
    pod = read_properties(tmp_path / "pod.properties")
    shipped = read_properties(CONFIG)
    assert pod.keys() >= {"models", "default_workers_per_model", "job_queue_size"}
    for key, value in pod.items():
        if key == "models":
            assert json.loads(value) == json.loads(shipped[key])
        else:
            assert value == shipped[key], key


def test_disruptions_take_one_pod_at_a_time(rendered):
    (pdb,) = _objects(rendered["deploy/kubernetes/overlays/example"], "PodDisruptionBudget")
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "sentiment", "app.kubernetes.io/instance": "sentiment"}},
    }
    (deployment,) = _objects(rendered["deploy/kubernetes/overlays/example"], "Deployment")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_pods_spread_over_nodes_and_zones(rendered):
    pod = _pod(rendered["deploy/kubernetes/overlays/example"])
    labels = _objects(rendered["deploy/kubernetes/overlays/example"], "Deployment")[0]["spec"]["template"]["metadata"][
        "labels"
    ]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in spread.values():
        assert constraint["maxSkew"] == 1
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]  # this revision's pods only
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["kubernetes.io/hostname"]["nodeTaintsPolicy"] == "Honor"  # a cordoned node is no empty domain


HEALTH = ["python", "-m", "server.health"]


def _probe_bound(probe) -> int:
    """Seconds from a hang to the last failed probe, at worst: a probe may start just
    before the hang, then failureThreshold probes, periodSeconds apart, each timing out."""
    return probe["periodSeconds"] * probe["failureThreshold"] + probe.get("timeoutSeconds", 1)


@pytest.mark.parametrize("path", ["deploy/kubernetes/base", "deploy/kubernetes/overlays/local"])
def test_each_container_has_its_own_probes(rendered, path):
    containers = _containers(_pod(rendered[path]))
    gateway, torchserve = containers["gateway"], containers["torchserve"]
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert "startupProbe" not in gateway, "nginx starts at once; the model's load is TorchServe's startup probe"
    assert "exec" not in gateway["livenessProbe"] and "readinessProbe" not in torchserve
    for name in ("livenessProbe", "startupProbe"):
        assert torchserve[name]["exec"]["command"] == HEALTH, name
    liveness, startup = torchserve["livenessProbe"], torchserve["startupProbe"]
    # a hung TorchServe: its probes fail for 25-35 s, then it has 10 s to stop
    assert 25 <= _probe_bound(liveness) - liveness["periodSeconds"] and _probe_bound(liveness) <= 40
    assert _probe_bound(liveness) + liveness["terminationGracePeriodSeconds"] <= 45
    assert liveness["timeoutSeconds"] >= 3, "a python start on a loaded node takes seconds"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "a slow model load is not a hang"


@pytest.mark.parametrize("path", ["deploy/kubernetes/base", "deploy/kubernetes/overlays/local"])
def test_ephemeral_storage_is_requested_for_what_the_volumes_may_hold(rendered, path):
    pod = _pod(rendered[path])
    containers = _containers(pod)
    limits = {}
    for name, container in containers.items():
        resources = container["resources"]
        assert "ephemeral-storage" in resources["requests"], name
        limits[name] = _bytes(resources["limits"]["ephemeral-storage"])
        assert _bytes(resources["requests"]["ephemeral-storage"]) <= limits[name]
    empty_dirs = {v["name"]: v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v}
    assert all("sizeLimit" in e and e.get("medium") != "Memory" for e in empty_dirs.values())
    # each emptyDir is charged to the container that writes it (the workdir is TorchServe's)
    charged = {"torchserve": ["torchserve", "torchserve-tmp"], "gateway": ["gateway-tmp"]}
    assert sorted(sum(charged.values(), [])) == sorted(empty_dirs)
    for name, volumes in charged.items():
        assert sum(_bytes(empty_dirs[v]["sizeLimit"]) for v in volumes) < limits[name], name


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return int(float(quantity[: -len(unit)]) * factor)
    return int(quantity)


def test_the_service_monitor_selects_the_service_and_its_metrics_port(rendered):
    docs = rendered["deploy/kubernetes/overlays/example"]
    service = next(d for d in docs if d["kind"] == "Service")
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert service["metadata"]["name"] == "sentiment"  # the job label the rules select on
    # ... whose target is the gateway's metrics listener, not TorchServe's own port
    metrics = next(p for p in service["spec"]["ports"] if p["name"] == monitor["spec"]["endpoints"][0]["port"])
    gateway = _containers(_pod(docs))["gateway"]
    assert metrics["targetPort"] == "metrics" and _port(gateway, "metrics") == _metrics_port_arg(gateway)
    _assert_gateway_endpoint(monitor["spec"]["endpoints"], metrics["name"])


def _assert_gateway_endpoint(endpoints: list[dict], port: str) -> None:
    """The monitor's second endpoint: the gateway's latency histogram on the same port, as
    a job of its own (the rules' latency SLO selects job="sentiment-gateway")."""
    assert [(e["port"], e["path"]) for e in endpoints] == [(port, "/metrics"), (port, "/metrics/gateway")]
    assert {"action": "replace", "targetLabel": "job", "replacement": "sentiment-gateway"} in endpoints[1][
        "relabelings"
    ]
    rules = (ROOT / "monitoring" / "prometheusrule.yaml").read_text()
    assert 'sentiment_gateway_request_duration_seconds_count{job="sentiment-gateway"' in rules


@pytest.mark.parametrize("path", ["deploy/kubernetes/base", "deploy/kubernetes/overlays/local"])
def test_torchserves_metrics_are_on_the_pods_loopback_behind_the_gateways_metrics_listener(rendered, path):
    """TorchServe's metrics port caps and times out nothing: the production profile keeps it
    on loopback, the TorchServe container publishes no port, and the gateway serves it on
    the port named `metrics` that the Service, the NetworkPolicy and the monitors select."""
    profile = read_properties(PRODUCTION_PROFILE)
    assert profile["metrics_address"].startswith("http://127.0.0.1:"), profile["metrics_address"]
    containers = _containers(_pod(rendered[path]))
    assert not containers["torchserve"].get("ports")
    gateway = containers["gateway"]
    assert [p["name"] for p in gateway["ports"]] == ["http", "metrics"]
    assert _metrics_port_arg(gateway) == _port(gateway, "metrics")
    assert _port(gateway, "metrics") != int(profile["metrics_address"].rsplit(":", 1)[1])  # one netns


def test_the_network_policy_admits_the_gateway_from_anywhere_and_metrics_from_monitoring_only(rendered):
    docs = rendered["deploy/kubernetes/overlays/example"]
    (policy,) = _objects(docs, "NetworkPolicy")
    (deployment,) = _objects(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    _check_network_policy(policy, labels, _containers(_pod(docs))["gateway"], api="https")  # components/tls


def test_the_kserve_network_policy_covers_the_predictors_pods_as_the_deployments_does():
    """deploy/kserve/networkpolicy.yaml selects the pods KServe makes for the
    InferenceService's predictor (by the labels KServe gives them) and admits what the
    Deployment's NetworkPolicy admits, by the predictor's own port names."""
    policy = yaml.safe_load(KSERVE_NETWORK_POLICY.read_text())
    isvc = yaml.safe_load(INFERENCE_SERVICE.read_text())
    assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    # what KServe labels each predictor pod with (besides the InferenceService's own labels)
    kserve_labels = {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"], "component": "predictor"}
    pod_labels = {**isvc["metadata"].get("labels", {}), **kserve_labels}
    assert policy["spec"]["podSelector"]["matchLabels"] == {**kserve_labels, INSTANCE: pod_labels[INSTANCE]}
    _check_network_policy(policy, pod_labels, isvc["spec"]["predictor"]["containers"][0])
    monitor = yaml.safe_load((ROOT / "deploy" / "kserve" / "podmonitor.yaml").read_text())
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def _selectors(doc) -> list[tuple[str, dict]]:
    """Every label selector of an object that picks this project's pods (or the Service
    the ServiceMonitor scrapes), as (where, matchLabels)."""
    spec, kind = doc.get("spec", {}), doc["kind"]
    found = []
    if kind == "Deployment":
        found.append(("spec.selector", spec["selector"]["matchLabels"]))
        found.extend(
            (f"topologySpread {c['topologyKey']}", c["labelSelector"]["matchLabels"])
            for c in spec["template"]["spec"].get("topologySpreadConstraints", [])
        )
    elif kind == "Service":
        found.append(("spec.selector", spec["selector"]))
    elif kind == "NetworkPolicy":
        found.append(("spec.podSelector", spec["podSelector"]["matchLabels"]))
    elif kind in ("PodDisruptionBudget", "ServiceMonitor", "PodMonitor"):
        found.append(("spec.selector", spec["selector"]["matchLabels"]))
    return found


KINDS_WITH_SELECTORS = {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget", "ServiceMonitor"}


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_selector_includes_the_instance_label(rendered, path):
    docs = rendered[path]
    selectors = [(d["kind"], where, labels) for d in docs for where, labels in _selectors(d)]
    assert {kind for kind, _, _ in selectors} == KINDS_WITH_SELECTORS & {d["kind"] for d in docs}
    assert {kind for kind, _, _ in selectors} >= ({"ServiceMonitor"} if path == "monitoring" else {"Deployment"})
    missing = [(kind, where) for kind, where, labels in selectors if INSTANCE not in labels]
    assert missing == [], f"selectors without {INSTANCE}: {missing}"
    for doc in docs:
        if doc["kind"] != "Namespace":  # the overlay's namespace is no part of one install
            assert INSTANCE in doc["metadata"].get("labels", {}), (doc["kind"], doc["metadata"]["name"])
        if doc["kind"] == "Deployment":
            pods = doc["spec"]["template"]["metadata"]["labels"]
            assert all(labels.items() <= pods.items() for kind, _, labels in selectors if kind != "ServiceMonitor")


def test_the_kserve_selectors_include_the_inference_services_instance_label():
    isvc = yaml.safe_load(INFERENCE_SERVICE.read_text())
    instance = isvc["metadata"]["labels"][INSTANCE]
    for name in ("networkpolicy.yaml", "podmonitor.yaml"):
        doc = yaml.safe_load((ROOT / "deploy" / "kserve" / name).read_text())
        assert doc["metadata"]["labels"][INSTANCE] == instance, name
        ((_, labels),) = _selectors(doc)
        assert labels[INSTANCE] == instance, name


def _install(tmp_path, instance: str) -> list[dict]:
    """The base and the monitoring objects as a second install in one namespace is made:
    its own name prefix and instance label, set once in its overlay (docs/kubernetes.md)."""
    overlay = tmp_path / instance
    overlay.mkdir()
    up = Path(os.path.relpath(ROOT, overlay))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "shared",
        "namePrefix": f"{instance}-",
        "resources": [str(up / "deploy/kubernetes/base"), str(up / "monitoring")],
        "labels": [
            {
                "pairs": {INSTANCE: instance},
                "includeSelectors": True,
                "fields": [{"kind": "ServiceMonitor", "path": "spec/selector/matchLabels", "create": True}],
            }
        ],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    kubectl = tool("kubectl")
    assert kubectl is not None
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_two_installs_in_one_namespace_select_disjoint_pods(tmp_path):
    installs = {name: _install(tmp_path, name) for name in ("blue", "green")}
    names = {name: {(d["kind"], d["metadata"]["name"]) for d in docs} for name, docs in installs.items()}
    assert not names["blue"] & names["green"], "two installs would overwrite each other's objects"
    for name, docs in installs.items():
        (deployment,) = _objects(docs, "Deployment")
        pods = deployment["spec"]["template"]["metadata"]["labels"]
        (service,) = _objects(docs, "Service")
        assert pods[INSTANCE] == name
        for other, other_docs in installs.items():
            for doc in other_docs:
                for where, labels in _selectors(doc):
                    # the ServiceMonitor selects Services; everything else selects pods
                    target = service["metadata"]["labels"] if doc["kind"] == "ServiceMonitor" else pods
                    matches = labels.items() <= target.items()
                    assert matches == (other == name), (other, doc["kind"], where, name)


def promtool(*args, cwd):
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: apt-get install prometheus (make test does)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def rules_dir(tmp_path):
    rule = yaml.safe_load((ROOT / "monitoring" / "prometheusrule.yaml").read_text())
    # no line folded: the tests below edit expressions as text
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, width=10**6))
    shutil.copy(ROOT / "monitoring" / "rules-test.yaml", tmp_path / "rules-test.yaml")
    return tmp_path


def test_alert_rules_pass_promtool_check_and_unit_tests(rules_dir):
    checked = promtool("check", "rules", "rules.yaml", cwd=rules_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "rules-test.yaml", cwd=rules_dir)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_promtool_unit_tests_fail_when_an_alert_changes(rules_dir):
    rules = (rules_dir / "rules.yaml").read_text()
    (rules_dir / "rules.yaml").write_text(rules.replace("(14.4 * 0.005)", "(14.4 * 0.006)"))
    tested = promtool("test", "rules", "rules-test.yaml", cwd=rules_dir)
    assert tested.returncode != 0 and "SentimentErrorBudgetBurn" in tested.stdout + tested.stderr


SLO_ALERTS = {"SentimentErrorBudgetBurn", "SentimentLatencyBudgetBurn"}
PER_POD = {"SentimentPodNotReady", "SentimentWorkerRestarts", "SentimentQueueFull", "SentimentInferenceSlow"}


def test_pages_are_for_what_users_see_and_every_alert_is_unit_tested():
    rule = yaml.safe_load((ROOT / "monitoring" / "prometheusrule.yaml").read_text())
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    names = {a["alert"] for a in alerts}
    assert names == SLO_ALERTS | PER_POD | {"SentimentMetricsAbsent", "SentimentHPAAtMaxReplicas"}
    for alert in alerts:
        if alert["alert"] in PER_POD | {"SentimentHPAAtMaxReplicas"}:
            assert alert["labels"]["severity"] == "warning", alert["alert"]
    # each SLO: two pages (fast burn) and two tickets (slow burn), every window pair
    for name in SLO_ALERTS:
        tiers = {
            (a["labels"]["long_window"], a["labels"]["short_window"]): a["labels"]["severity"]
            for a in alerts
            if a["alert"] == name
        }
        assert tiers == {
            ("1h", "5m"): "critical",
            ("6h", "30m"): "critical",
            ("1d", "2h"): "warning",
            ("3d", "6h"): "warning",
        }, name
    assert any(a["expr"] == 'absent(up{job="sentiment"}) or absent(up{job="sentiment-gateway"})' for a in alerts)
    tests = yaml.safe_load((ROOT / "monitoring" / "rules-test.yaml").read_text())["tests"]
    tested = {t["alertname"] for group in tests for t in group.get("alert_rule_test", []) if t["exp_alerts"]}
    assert tested == names, f"alerts never seen firing in rules-test.yaml: {names - tested}"


RUNBOOK_BASE = "https://git.example.com/ml/sentiment-serve/blob/main"  # prometheusrule.yaml's


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub (and GitLab) give a markdown file's headings."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def _alerts(rule) -> list[dict]:
    return [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_summary_a_description_and_a_runbook_url_into_the_docs():
    rule = yaml.safe_load((ROOT / "monitoring" / "prometheusrule.yaml").read_text())
    for alert in _alerts(rule):
        annotations = alert["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, alert["alert"]
        assert all(annotations.values()), alert["alert"]
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_BASE + "/docs/"), url
        path, _, fragment = url.removeprefix(RUNBOOK_BASE + "/").partition("#")
        assert fragment == alert["alert"].lower(), url  # each alert its own section
        assert fragment in _anchors((ROOT / path).read_text()), f"{url}: no such heading in {path}"


def test_an_overlay_sets_the_runbook_base_once(rendered):
    """The example overlay points every runbook_url at its own docs base (runbooks.yaml),
    past the base the rules carry."""
    config = yaml.safe_load((ROOT / "deploy/kubernetes/overlays/example/runbooks.yaml").read_text())
    base = config["data"]["base"]
    assert base != RUNBOOK_BASE
    (rule,) = _objects(rendered["deploy/kubernetes/overlays/example"], "PrometheusRule")
    raw = yaml.safe_load((ROOT / "monitoring" / "prometheusrule.yaml").read_text())
    urls = [a["annotations"]["runbook_url"] for a in _alerts(rule)]
    assert urls == [a["annotations"]["runbook_url"].replace(RUNBOOK_BASE, base) for a in _alerts(raw)]
    assert not [d for d in rendered["deploy/kubernetes/overlays/example"] if d["metadata"]["name"] == "runbooks"]


def test_no_dashboard_panel_names_a_threshold_or_alert_the_rules_do_not_have():
    """A panel title that names an alert, or a percentage, names one the rules have (a
    "5xx ratio (alert over 1%)" panel once named an alert that did not exist)."""
    rule = yaml.safe_load((ROOT / "monitoring" / "prometheusrule.yaml").read_text())
    names = {a["alert"] for a in _alerts(rule)}
    text = (ROOT / "monitoring" / "prometheusrule.yaml").read_text()
    # every number in the rules, as the percentage a title would write
    percents = {f"{float(n) * 100:g}%" for n in re.findall(r"\b0\.\d+\b", text)}
    dashboard = json.loads((ROOT / "monitoring" / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        title = panel["title"]
        assert set(re.findall(r"Sentiment\w+", title)) <= names, title
        assert "alert" not in title.lower() or re.search(r"Sentiment\w+", title), title
        assert set(re.findall(r"\d+(?:\.\d+)?%", title)) <= percents, title


def test_the_rules_tests_pass_only_with_each_threshold(rules_dir):
    """Each threshold moved a little makes promtool's unit tests fail: the series beside it
    are close enough on both sides to tell. (Only the tests of the alert concerned run.)"""
    rules = (rules_dir / "rules.yaml").read_text()
    tests = yaml.safe_load((rules_dir / "rules-test.yaml").read_text())
    moved = {  # up: the series just above stops firing; down: the one just below starts
        "(14.4 * 0.005)": ("(14.4 * 0.0048)", "SentimentErrorBudgetBurn"),
        "(6 * 0.005)": ("(6 * 0.0054)", "SentimentErrorBudgetBurn"),
        "(3 * 0.005)": ("(3 * 0.0056)", "SentimentErrorBudgetBurn"),
        "(1 * 0.005)": ("(1 * 0.0058)", "SentimentErrorBudgetBurn"),
        "(14.4 * 0.01)": ("(14.4 * 0.0118)", "SentimentLatencyBudgetBurn"),
        "(6 * 0.01)": ("(6 * 0.0116)", "SentimentLatencyBudgetBurn"),
        "(3 * 0.01)": ("(3 * 0.0115)", "SentimentLatencyBudgetBurn"),
        "(1 * 0.01)": ("(1 * 0.0126)", "SentimentLatencyBudgetBurn"),
        # the latency SLO's threshold, its histogram's bucket (gateway/latency.py)
        r"le=\"0.25\"": (r"le=\"0.5\"", "SentimentLatencyBudgetBurn"),
        "p99_rate5m > 0.5": ("p99_rate5m > 0.45", "SentimentInferenceSlow"),
        "ratio_rate2m) > 0.01": ("ratio_rate2m) > 0.008", "SentimentQueueFull"),
        "changes15m > 0": ("changes15m > 1", "SentimentWorkerRestarts"),
        ">= kube_horizontalpodautoscaler_spec_max_replicas": (
            "> kube_horizontalpodautoscaler_spec_max_replicas",
            "SentimentHPAAtMaxReplicas",
        ),
    }
    for old, (new, alert) in moved.items():
        assert rules.count(old) >= 1, old
        groups = [g for g in tests["tests"] if any(t["alertname"] == alert for t in g.get("alert_rule_test", []))]
        (rules_dir / "moved-test.yaml").write_text(yaml.safe_dump({**tests, "tests": groups}))
        (rules_dir / "rules.yaml").write_text(rules.replace(old, new))
        tested = promtool("test", "rules", "moved-test.yaml", cwd=rules_dir)
        assert tested.returncode != 0 and alert in tested.stdout + tested.stderr, f"{old} -> {new} passed"


KSERVE_SDK = ROOT / "build" / "kserve-sdk" / "bin" / "python"
INFERENCE_SERVICE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"


def test_the_inference_service_is_what_the_kserve_sdk_writes():
    if not KSERVE_SDK.exists():
        pytest.fail("build/kserve-sdk is missing: `make test` builds it")
    rendered = subprocess.run(
        [str(KSERVE_SDK), str(ROOT / "deploy" / "kserve" / "render.py")], capture_output=True, text=True, check=True
    )
    assert rendered.stdout == INFERENCE_SERVICE.read_text(), "run `make kserve`: the committed file is stale"


def _keys_and_values(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield path, key, item
            if path.rsplit(".", 1)[-1] not in ("labels", "annotations"):
                yield from _keys_and_values(item, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            yield from _keys_and_values(item, path)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_inference_service_is_a_correct_manifest(tmp_path, version):
    isvc = yaml.safe_load(INFERENCE_SERVICE.read_text())
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert not [(p, k) for p, k, v in _keys_and_values(isvc) if v is None], "nulls in the manifest"
    assert not [(p, k) for p, k, _ in _keys_and_values(isvc) if "_" in k], "snake_case keys"
    predictor = isvc["spec"]["predictor"]
    assert predictor["containers"][0]["name"] == "kserve-container"
    assert "gateway" in predictor["containers"][0]["args"]
    # its pod parts, as a Pod, against the Kubernetes schemas
    pod_fields = {k: v for k, v in predictor.items() if k not in ("minReplicas", "maxReplicas", "autoScaling")}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sentiment"}, "spec": pod_fields}
    target = tmp_path / "pod.yaml"
    target.write_text(yaml.safe_dump(pod))
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(target)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "WARN" not in result.stdout, result.stdout + result.stderr
    # and the NetworkPolicy beside it, as it is applied
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(KSERVE_NETWORK_POLICY)],
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and " passed for resource " in output and "WARN" not in output, output


def test_the_inference_service_scales_with_the_fields_kserve_reads():
    """KServe 0.15+ builds its HPA from spec.predictor minReplicas, maxReplicas and the
    autoScaling block (Resource metrics only); serving.kserve.io/metric is no annotation
    of KServe's, and the predictor's pod keeps the Deployment's probes and spread."""
    isvc = yaml.safe_load(INFERENCE_SERVICE.read_text())
    annotations = isvc["metadata"]["annotations"]
    assert annotations == {
        "serving.kserve.io/deploymentMode": "RawDeployment",
        "serving.kserve.io/autoscalerClass": "hpa",
    }
    predictor = isvc["spec"]["predictor"]
    assert 2 <= predictor["minReplicas"] < predictor["maxReplicas"]
    assert predictor["autoScaling"] == {
        "metrics": [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
            }
        ]
    }
    containers = _containers(predictor)
    assert containers["torchserve"]["livenessProbe"]["exec"]["command"] == HEALTH
    assert containers["kserve-container"]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {c["topologyKey"] for c in predictor["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }


TLS_SECRET_MOUNT = "/etc/sentiment-tls"


def test_the_example_overlay_serves_tls_from_the_certificate_secret(rendered):
    """components/tls: the gateway serves its client port with the Secret's pair (mounted
    whole, so that the kubelet's updates reach it; owner and group only), the port, the
    probes, the Service and the NetworkPolicy all say https; the base stays plain HTTP
    (the testbed and podman run it)."""
    docs = rendered["deploy/kubernetes/overlays/example"]
    pod = _pod(docs)
    gateway = _containers(pod)["gateway"]
    args = gateway["args"]
    assert args[args.index("--tls-cert-file") + 1] == f"{TLS_SECRET_MOUNT}/tls.crt"
    assert args[args.index("--tls-key-file") + 1] == f"{TLS_SECRET_MOUNT}/tls.key"
    (mount,) = [m for m in gateway["volumeMounts"] if m["mountPath"] == TLS_SECRET_MOUNT]
    assert mount.get("readOnly") and "subPath" not in mount, "a subPath mount never sees a renewal"
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "sentiment-tls"
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "the key readable by the pod's group only"
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    assert [p["name"] for p in gateway["ports"]] == ["https", "metrics"]
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert gateway[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}, probe
    (service,) = _objects(docs, "Service")
    assert service["spec"]["ports"][0] == {"name": "https", "port": 443, "targetPort": "https", "appProtocol": "https"}
    base = _containers(_pod(rendered["deploy/kubernetes/base"]))["gateway"]
    assert "--tls-cert-file" not in base["args"] and base["ports"][0]["name"] == "http"
