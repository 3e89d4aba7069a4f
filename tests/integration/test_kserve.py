"""KServe v1 and the Open Inference Protocol v2 through the gateway, in front of a real
TorchServe with token auth on: predictions equal to the native API's, the bad-input table
in each protocol's error shape, one concurrent burst mixing all three protocols with no
5xx, and the health and metadata endpoints (without a client key for health)."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from request_cases import CASES

from helpers import gateway_in_front, metric, metric_samples
from training.tweets import split_tweets

CLIENTS = {"kserve-client": "kserve-client-key-31415"}
AUTH = {"Authorization": f"Bearer {CLIENTS['kserve-client']}"}
JSON = "application/json"


@pytest.fixture(scope="module")
def gateway(server, tmp_path_factory):
    with gateway_in_front(server, tmp_path_factory.mktemp("kserve-gateway"), CLIENTS) as gw:
        yield gw


def post(gateway, path, body, content_type=JSON, auth=AUTH):
    headers = dict(auth)
    if content_type:
        headers["Content-Type"] = content_type
    return requests.post(gateway.url(path), data=body, headers=headers, timeout=60)


def v1(texts) -> bytes:
    return json.dumps({"instances": texts}).encode()


def v2(texts, **extra) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}], **extra}
    ).encode()


def native(gateway, texts):
    return post(gateway, "/predictions/sentiment", json.dumps({"text": texts}).encode()).json()


def test_v1_predict_answers_as_the_native_api(gateway):
    texts = ["I love this", "This is terrible"]
    answer = post(
        gateway, "/v1/models/sentiment:predict", json.dumps({"instances": [texts[0], {"text": texts[1]}]}).encode()
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": native(gateway, texts)}


def test_v2_infer_answers_as_the_native_api(gateway):
    texts = ["I love this", "This is terrible", "meh"]
    expected = native(gateway, texts)
    answer = post(gateway, "/v2/models/sentiment/infer", v2(texts, id="request-42"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("sentiment", "1.0", "request-42")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"] == {
        "name": "label",
        "datatype": "BYTES",
        "shape": [3],
        "data": [p["label"] for p in expected],
    }
    assert outputs["score"]["data"] == [p["score"] for p in expected]
    assert outputs["scores"]["shape"] == [3, 2]
    versioned = post(gateway, "/v2/models/sentiment/versions/1.0/infer", v2(texts[:1], outputs=[{"name": "label"}]))
    assert versioned.status_code == 200 and [o["name"] for o in versioned.json()["outputs"]] == ["label"]
    unknown = post(gateway, "/v2/models/sentiment/versions/9.9/infer", v2(texts[:1]))
    assert unknown.status_code == 404  # TorchServe's own refusal, in its own shape
    assert unknown.json()["type"] == "ModelVersionNotFoundException"


# The native bad-input table, each case put into the v1 and the v2 envelope where its
# fault is in the texts, and sent as it is where the fault is in the body itself.
def as_protocol(case, protocol):
    name, path, body, content_type, status, kind = case
    if path:  # an unknown model: a path the gateway does not route
        prefix = "/v1/models/no-such-model:predict" if protocol == "v1" else "/v2/models/no-such-model/infer"
        return prefix, body, content_type, 404, "NotFound"
    envelope = v1 if protocol == "v1" else v2
    path = "/v1/models/sentiment:predict" if protocol == "v1" else "/v2/models/sentiment/infer"
    if name == "body over max_request_size":  # the gateway's own limit
        return path, body, content_type, 413, "RequestTooLarge"
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        value = None
    if content_type == JSON and isinstance(value, dict) and set(value) == {"text"}:
        texts = value["text"] if isinstance(value["text"], list) else [value["text"]]
        if texts == [] and status == 400:
            return path, envelope([]), JSON, 400, "EmptyText"
        return path, envelope(texts), JSON, status, kind
    if status == 200:
        return path, envelope([body.decode() if content_type != JSON else value["text"]]), JSON, 200, None
    if content_type == "text/plain":  # a JSON-only API refuses text bodies
        return path, body, content_type, 415, "UnsupportedMediaType"
    if name in ("JSON not an object", "no text field", "extra field"):
        return path, body, content_type, 400, "InvalidInput"
    return path, body, content_type, status, kind


@pytest.mark.parametrize("protocol", ["v1", "v2"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_bad_input_table_in_each_protocols_shape(gateway, case, protocol):
    path, body, content_type, status, kind = as_protocol(case, protocol)
    answer = post(gateway, path, body, content_type)
    assert answer.status_code == status, (case[0], answer.text[:300])
    if status == 200:
        assert answer.json()["predictions" if protocol == "v1" else "outputs"]
        return
    error = answer.json()
    if kind == "NotFound":  # a path outside the API: the gateway's own 404
        assert error["type"] == "NotFound"
        return
    assert set(error) == {"error"} and error["error"].startswith(f"{kind}:"), error


def test_a_burst_mixing_protocols_is_batched_together_with_no_5xx(server, gateway):
    _, heldout = split_tweets()
    texts = [t.text for t in heldout[400:448]]
    alone = {t: native(gateway, [t])[0] for t in texts}
    rng = random.Random(11)
    jobs = []
    jobs.extend(("good", ("native", "v1", "v2")[i % 3], text) for i, text in enumerate(texts))
    jobs.extend(("bad", protocol, as_protocol(case, protocol)) for case in CASES[:12] for protocol in ("v1", "v2"))
    rng.shuffle(jobs)
    before = metric_samples(server)

    def send(job):
        kind, protocol, what = job
        if kind == "bad":
            path, body, content_type, _, _ = what
            return job, post(gateway, path, body, content_type)
        if protocol == "native":
            return job, post(gateway, "/predictions/sentiment", json.dumps({"text": what}).encode())
        if protocol == "v1":
            return job, post(gateway, "/v1/models/sentiment:predict", v1([what]))
        return job, post(gateway, "/v2/models/sentiment/infer", v2([what]))

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(send, jobs))
    for (kind, protocol, what), answer in results:
        assert answer.status_code < 500, answer.text
        if kind == "bad":
            assert answer.status_code == what[3], (what, answer.text[:200])
            continue
        assert answer.status_code == 200, (protocol, answer.status_code, answer.text[:200])
        body = answer.json()
        got = (
            body
            if protocol == "native"
            else body["predictions"][0]
            if protocol == "v1"
            else {"label": body["outputs"][0]["data"][0], "score": body["outputs"][1]["data"][0]}
        )
        assert got["label"] == alone[what]["label"]
        assert got["score"] == pytest.approx(alone[what]["score"], abs=1e-3)
    after = metric_samples(server)
    batches = metric(after, "SentimentBatchSize_count") - metric(before, "SentimentBatchSize_count")
    handled = metric(after, "SentimentBatchSize_sum") - metric(before, "SentimentBatchSize_sum")
    assert handled / batches > 1.5, "requests of different protocols were not batched together"


def test_health_and_metadata(gateway):
    for path, answer in (
        ("/v2/health/live", {"live": True}),
        ("/v2/health/ready", {"ready": True}),
        ("/v2/models/sentiment/ready", {"name": "sentiment", "ready": True}),
        ("/v1/models/sentiment", {"name": "sentiment", "ready": True}),
    ):
        response = requests.get(gateway.url(path), timeout=10)  # no client key: probes
        assert (response.status_code, response.json()) == (200, answer), path
    assert requests.get(gateway.url("/v2/models/sentiment"), timeout=10).status_code == 401
    metadata = requests.get(gateway.url("/v2/models/sentiment"), headers=AUTH, timeout=10)
    assert metadata.status_code == 200
    assert metadata.json()["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in metadata.json()["outputs"]] == ["label", "score", "scores"]
    assert requests.post(gateway.url("/v2/health/ready"), timeout=10).status_code == 405
    server_metadata = requests.get(gateway.url("/v2"), timeout=10)  # no client key either
    assert server_metadata.status_code == 200 and set(server_metadata.json()) == {"name", "version", "extensions"}
    assert post(gateway, "/v2/models/sentiment/infer", v2(["x"]), auth={}).status_code == 401
    assert requests.get(gateway.url("/v2/models/sentiment/infer"), headers=AUTH, timeout=10).status_code == 405
