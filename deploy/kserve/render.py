"""Write the KServe InferenceService with the kserve SDK's typed models.

    build/kserve-sdk/bin/python deploy/kserve/render.py > deploy/kserve/inferenceservice.yaml

(`make kserve` does it; the SDK 0.21 serializes a correct manifest only with
kubernetes>=36,<37, hence its own venv.) The predictor is this project's own pod, taken
from deploy/kubernetes/base/deployment.yaml: the gateway first, as KServe's
`kserve-container` (it serves KServe v1 and the Open Inference Protocol v2 with the client
keys, on its first port, and TorchServe's metrics on its `metrics` port, which
podmonitor.yaml scrapes), and TorchServe beside it, with token authorization on and every
port on the pod's loopback. Not KServe's TorchServe runtime, which cannot pass
TorchServe's token auth and is being removed. networkpolicy.yaml admits the gateway's port
from anywhere and the metrics port from the monitoring namespace only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from kserve import (
    V1beta1AutoScalingSpec,
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1MetricsSpec,
    V1beta1MetricTarget,
    V1beta1PredictorSpec,
    V1beta1ResourceMetricSource,
)
from kubernetes import client as k8s

DEPLOYMENT = Path(__file__).resolve().parent.parent / "kubernetes" / "base" / "deployment.yaml"
IMAGE = "registry.example.com/ml/sentiment-serve:0.3.0"
# KServe copies the InferenceService's labels onto the predictor's pods; networkpolicy.yaml
# and podmonitor.yaml select on this instance label too (a second install in the namespace
# gets its own InferenceService name and instance: docs/kserve.md)
LABELS = {"app.kubernetes.io/name": "sentiment", "app.kubernetes.io/instance": "sentiment"}


def pod_spec() -> k8s.V1PodSpec:
    template = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    for container in template["containers"]:
        container["image"] = IMAGE
        if container["name"] == "gateway":
            container["name"] = "kserve-container"
    # KServe routes to the first container's first port: the gateway's API (its metrics
    # port, second, is one more port of KServe's Service; the PodMonitor scrapes the pods)
    template["containers"].sort(key=lambda c: c["name"] != "kserve-container")
    gateway = template["containers"][0]
    if [p["name"] for p in gateway["ports"]] != ["http", "metrics"]:
        raise ValueError(f"the gateway's ports must be http, then metrics: {gateway['ports']}")
    # spread the predictor's pods by the label KServe gives every pod of this service
    for constraint in template.get("topologySpreadConstraints", []):
        constraint["labelSelector"] = {"matchLabels": {"serving.kserve.io/inferenceservice": "sentiment"}}
    return k8s.ApiClient()._ApiClient__deserialize(template, "V1PodSpec")


def inference_service() -> V1beta1InferenceService:
    pod = pod_spec()
    predictor = V1beta1PredictorSpec(
        # KServe (0.15+) builds the HPA from these: minReplicas, maxReplicas and the
        # autoScaling block. Its HPA reconciler passes on Resource metrics (cpu, memory)
        # only, with its default behavior: the queue signal and the scale-up/down policies
        # of deploy/kubernetes/base/hpa.yaml need the plain Deployment (docs/kserve.md).
        min_replicas=2,
        max_replicas=10,
        auto_scaling=V1beta1AutoScalingSpec(
            metrics=[
                V1beta1MetricsSpec(
                    type="Resource",
                    resource=V1beta1ResourceMetricSource(
                        name="cpu", target=V1beta1MetricTarget(type="Utilization", average_utilization=70)
                    ),
                )
            ]
        ),
        containers=pod.containers,
        topology_spread_constraints=pod.topology_spread_constraints,
        volumes=pod.volumes,
        security_context=pod.security_context,
        termination_grace_period_seconds=pod.termination_grace_period_seconds,
        automount_service_account_token=False,
        enable_service_links=False,
    )
    return V1beta1InferenceService(
        api_version="serving.kserve.io/v1beta1",
        kind="InferenceService",
        metadata=k8s.V1ObjectMeta(
            name="sentiment",
            labels=LABELS,
            annotations={
                # a plain Deployment (no Knative): two containers, emptyDir, probes per container
                "serving.kserve.io/deploymentMode": "RawDeployment",
                "serving.kserve.io/autoscalerClass": "hpa",
            },
        ),
        spec=V1beta1InferenceServiceSpec(predictor=predictor),
    )


def main() -> int:
    manifest = k8s.ApiClient().sanitize_for_serialization(inference_service())
    sys.stdout.write("# Written by deploy/kserve/render.py with the kserve SDK 0.21: edit that, not this.\n")
    sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
