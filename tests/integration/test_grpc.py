"""The gRPC client against a real TorchServe: same answers as REST, token in metadata."""

from __future__ import annotations

import json

import grpc
import pytest

from clients.grpc_client import GrpcError, SentimentGrpcClient
from helpers import predict


@pytest.fixture(scope="module")
def grpc_client(server):
    with SentimentGrpcClient(f"127.0.0.1:{server.ports['grpc_inference']}", server.keys["inference"]) as client:
        yield client


@pytest.mark.parametrize(
    "payload",
    [
        {"text": "I love this"},
        {"text": "This is terrible"},
        {"text": ["Best day ever", "Worst service", "meh"]},
    ],
)
def test_grpc_answers_like_rest(server, grpc_client, payload):
    rest = predict(server, json.dumps(payload))
    assert rest.status_code == 200
    assert grpc_client.predict(payload) == rest.json()


def test_grpc_explicit_version(grpc_client):
    assert grpc_client.predict({"text": "I love this"}, version="1.0")["label"] == "positive"
    with pytest.raises(GrpcError) as info:
        grpc_client.predict({"text": "I love this"}, version="9.9")
    # TorchServe 0.12 answers an unknown version with INTERNAL over gRPC (404 over REST)
    assert "Model version: 9.9 does not exist" in info.value.details


def test_grpc_bad_input_is_an_error_with_the_json_message(grpc_client):
    with pytest.raises(GrpcError) as info:
        grpc_client.predict({"text": ""})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "EmptyText" in info.value.details


def test_grpc_needs_the_inference_token(server):
    with SentimentGrpcClient(f"127.0.0.1:{server.ports['grpc_inference']}", "wrong-key") as client:
        with pytest.raises(GrpcError) as info:
            client.predict({"text": "I love this"})
    assert "Token Authorization failed" in info.value.details
