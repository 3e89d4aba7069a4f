"""The Kubernetes manifests, checked offline: every object of every kustomization passes
kubernetes-validate --strict for the oldest and the newest Kubernetes this supports (a
kind it has no schema for is a failure, not a warning), the Prometheus Operator's objects
pass schemas written from its API reference, and the alert rules pass promtool's check and
unit tests. (The Deployment's pod runs for real in test_container.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from server.paths import ROOT

KUSTOMIZATIONS = ["deploy/kubernetes/base", "deploy/kubernetes/overlays/example",
                  "deploy/kubernetes/overlays/local", "monitoring"]
VERSIONS = ["1.25.0", "1.37.0"]  # the oldest and newest kubernetes-validate ships: both supported
CRD_SCHEMAS = {"ServiceMonitor": "servicemonitor.json", "PrometheusRule": "prometheusrule.json"}
SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def kustomize(path: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is missing: it renders the kustomizations (kubectl kustomize)")
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / path)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {path: kustomize(path) for path in KUSTOMIZATIONS}


def test_the_example_overlay_has_every_object_a_deployment_needs(rendered):
    kinds = sorted(d["kind"] for d in rendered["deploy/kubernetes/overlays/example"])
    assert kinds == sorted(["Namespace", "ConfigMap", "ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler",
                            "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor", "PrometheusRule"])
    assert all(d["metadata"].get("namespace") == "sentiment" for d in rendered["deploy/kubernetes/overlays/example"]
               if d["kind"] != "Namespace")
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
            result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version,
                                     str(target)], capture_output=True, text=True)
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
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", VERSIONS[0], str(target)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "livenessProbes" in result.stdout + result.stderr


def test_operator_objects_match_the_schemas_written_from_its_api_reference(rendered):
    found = {}
    for doc in rendered["monitoring"]:
        if doc["kind"] in CRD_SCHEMAS:
            schema = json.loads((SCHEMAS / CRD_SCHEMAS[doc["kind"]]).read_text())
            jsonschema.validate(doc, schema)
            found[doc["kind"]] = doc
    assert set(found) == set(CRD_SCHEMAS)
    broken = json.loads(json.dumps(found["ServiceMonitor"]))
    broken["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads((SCHEMAS / "servicemonitor.json").read_text()))
    broken = json.loads(json.dumps(found["PrometheusRule"]))
    broken["spec"]["groups"][0]["rules"][0]["for"] = "5m"  # a recording rule has no `for`
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads((SCHEMAS / "prometheusrule.json").read_text()))


def test_the_service_monitor_selects_the_service_and_its_metrics_port(rendered):
    docs = rendered["deploy/kubernetes/overlays/example"]
    service = next(d for d in docs if d["kind"] == "Service")
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert service["metadata"]["name"] == "sentiment"  # the job label the rules select on


def promtool(*args, cwd):
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: apt-get install prometheus (make test does)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def rules_dir(tmp_path):
    rule = yaml.safe_load((ROOT / "monitoring" / "prometheusrule.yaml").read_text())
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(ROOT / "monitoring" / "rules-test.yaml", tmp_path / "rules-test.yaml")
    return tmp_path


def test_alert_rules_pass_promtool_check_and_unit_tests(rules_dir):
    checked = promtool("check", "rules", "rules.yaml", cwd=rules_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "rules-test.yaml", cwd=rules_dir)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_promtool_unit_tests_fail_when_an_alert_changes(rules_dir):
    rules = (rules_dir / "rules.yaml").read_text()
    (rules_dir / "rules.yaml").write_text(rules.replace("sentiment:errors:ratio_rate5m > 0.01",
                                                        "sentiment:errors:ratio_rate5m > 0.2"))
    tested = promtool("test", "rules", "rules-test.yaml", cwd=rules_dir)
    assert tested.returncode != 0 and "SentimentErrorRatioHigh" in tested.stdout + tested.stderr


KSERVE_SDK = ROOT / "build" / "kserve-sdk" / "bin" / "python"
INFERENCE_SERVICE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"


def test_the_inference_service_is_what_the_kserve_sdk_writes():
    if not KSERVE_SDK.exists():
        pytest.fail("build/kserve-sdk is missing: `make test` builds it")
    rendered = subprocess.run([str(KSERVE_SDK), str(ROOT / "deploy" / "kserve" / "render.py")],
                              capture_output=True, text=True, check=True)
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
    pod_fields = {k: v for k, v in predictor.items() if k not in ("minReplicas", "maxReplicas")}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sentiment"}, "spec": pod_fields}
    target = tmp_path / "pod.yaml"
    target.write_text(yaml.safe_dump(pod))
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(target)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "WARN" not in result.stdout, result.stdout + result.stderr
