"""Key expiry and rotation on a real server: a client that reads key_file.json as the
README says keeps working across a rotation; old and expired keys are refused."""

from __future__ import annotations

import time

import pytest

from clients.torchserve import TorchServeClient, key_refused
from common.torchserve_files import KEY_FILE, read_keys
from helpers import ONE_WORKER_MODELS, keys_cli, predict
from testbed.local_server import LocalTorchServe

# keys left to expire (a minute at most), then a node waited for (180 s at most)
pytestmark = pytest.mark.timeout(600)


def start(store, workdir, expiry_min, wait_for_models=True):
    return LocalTorchServe(
        model_store=store,
        workdir=workdir,
        overrides={"models": ONE_WORKER_MODELS, "token_expiration_min": str(expiry_min)},
    ).start(wait_for_models=wait_for_models)


def test_a_client_keeps_working_across_a_rotation(default_store, tmp_path):
    server = start(default_store, tmp_path / "ts", 1440)
    try:
        client = TorchServeClient.from_config(server.workdir / "config.properties", server.workdir / KEY_FILE)
        assert client.predict({"text": "I love this"})[0] == 200
        old = dict(client.keys)

        for kind in ("inference", "management"):
            result = keys_cli(server, "rotate", kind)
            assert result.returncode == 0, result.stderr
            assert old[kind] not in result.stdout + result.stderr  # keys are never printed
        new = read_keys(server.workdir / KEY_FILE)
        assert new["inference"] != old["inference"] and new["management"] != old["management"]
        assert new["API"] == old["API"]

        # the old keys are refused, the new ones work
        assert predict(server, b'{"text": "I love this"}', token=old["inference"]).status_code == 400
        assert predict(server, b'{"text": "I love this"}', token=new["inference"]).status_code == 200
        # the client still holds the old keys, re-reads key_file.json when refused, and goes on
        status, answer = client.predict({"text": "I love this"})
        assert (status, answer["label"]) == (200, "positive")
        assert client.management("/models")[0] == 200
        assert client.keys == new

        shown = keys_cli(server, "show")
        assert shown.returncode == 0 and "inference: expires" in shown.stdout
        assert new["inference"] not in shown.stdout
    finally:
        server.stop()


def test_keys_expire_and_a_rotation_renews_them(default_store, tmp_path):
    # keys that live 15 s: long enough to load the model with the rotated ones
    server = start(default_store, tmp_path / "ts", 0.25, wait_for_models=False)
    try:
        key = server.keys["inference"]
        deadline = time.time() + 60
        while time.time() < deadline and not key_refused(*_post(server, key)):
            time.sleep(1)
        assert key_refused(*_post(server, key)), "the inference key did not expire"
        for kind in ("inference", "management"):
            result = keys_cli(server, "rotate", kind)
            assert result.returncode == 0, result.stderr
        server.client.wait_until_ready(180)  # re-reads the rotated keys when refused
        fresh = read_keys(server.workdir / KEY_FILE)["inference"]
        assert fresh != key
        assert predict(server, b'{"text": "hi"}', token=fresh).status_code == 200
    finally:
        server.stop()


def _post(server, key) -> tuple[int, bytes]:
    r = predict(server, b'{"text": "hi"}', token=key)
    return r.status_code, r.content
