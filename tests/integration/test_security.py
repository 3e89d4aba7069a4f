"""Security against a real server: token auth on both APIs, loopback-only addresses, no
key_file.json out of git (logs: test_logs.py). (Model registration limited to
the model store is in test_management.py.)"""

from __future__ import annotations

import socket
import subprocess

import pytest
import requests

from common.paths import CONFIG, ROOT
from common.torchserve_files import read_properties
from helpers import predict

BODY = b'{"text": "I love this"}'


def management(server, key=None, path="/models"):
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return requests.get(server.url("management", path), headers=headers, timeout=30)


def inference_without_header(server):
    return requests.post(
        server.url("inference", "/predictions/sentiment"),
        data=BODY,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


def refused(response) -> bool:
    # TorchServe 0.12 answers a missing or wrong key with 400 and this message
    return response.status_code == 400 and "Token Authorization failed" in response.text


def test_inference_api_needs_the_inference_key(server):
    assert predict(server, BODY).status_code == 200
    assert refused(inference_without_header(server))
    assert refused(predict(server, BODY, token="not-a-key"))
    assert refused(predict(server, BODY, token=server.keys["management"]))
    assert refused(predict(server, BODY, token=server.keys["API"]))


def test_management_api_needs_the_management_key(server):
    assert management(server, server.keys["management"]).status_code == 200
    assert refused(management(server))
    assert refused(management(server, "not-a-key"))
    assert refused(management(server, server.keys["inference"]))
    # a refused call changes nothing: scaling with the inference key leaves the workers as they were
    before = server.client.worker_pids("sentiment")
    r = requests.put(
        server.url("management", "/models/sentiment?min_worker=3&synchronous=true"),
        headers={"Authorization": f"Bearer {server.keys['inference']}"},
        timeout=30,
    )
    assert refused(r)
    assert server.client.worker_pids("sentiment") == before


def test_shipped_addresses_are_loopback():
    props = read_properties(CONFIG)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), key
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert props[key] == "127.0.0.1", key


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a source address
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_ports_are_not_reachable_from_outside_loopback(server):
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    for api, port in server.ports.items():
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, port)) != 0, f"{api} port {port} answers on {address}"
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex(("127.0.0.1", port)) == 0, f"{api} port {port} is not listening"


def test_key_file_is_kept_out_of_git():
    for path in ("key_file.json", "some/dir/key_file.json"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} is not git-ignored"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert not [f for f in tracked.stdout.splitlines() if f.endswith("key_file.json")]
