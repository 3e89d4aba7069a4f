"""What `make serve` and `make stop` run (server/serve.py), in a directory of its own with
the repo's config.properties on free ports: TorchServe and the gateway both come up, the
README's calls (its "Calling it" blocks, run by bash as a user pastes them) answer as the
README says, and stopping leaves neither running. Friendlier than production in one way,
said here: the ports are free ones instead of 8000 and 8080 (a developer's own `make serve`
may hold those), put into the README's commands in place of theirs."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from common.contract import GATEWAY_PORT
from common.net import free_port, port_is_open
from common.paths import ROOT
from server import launch, serve
from testbed.local_server import PORT_KEYS

pytestmark = pytest.mark.timeout(600)  # TorchServe's start with the default model, twice


def readme_calls() -> list[str]:
    """The shell blocks of the README's "Calling it" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Calling it") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"^```\n(.*?)^```", section, re.S | re.M)


def run_block(block: str, cwd, ports: dict[str, int]) -> list[str]:
    """The block's commands run by bash in `cwd` (each curl's answer on a line of its own),
    the README's ports replaced by the test's."""
    script = block.replace(f":{GATEWAY_PORT}/", f":{ports['gateway']}/").replace(":8080/", f":{ports['inference']}/")
    script = script.replace("curl ", "curl -sS -w '\\n' ")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [line for line in done.stdout.splitlines() if line.strip()]


def test_make_serve_brings_up_torchserve_and_the_gateway_and_the_readmes_calls_answer(default_store, tmp_path):
    run_dir = tmp_path / "repo"
    run_dir.mkdir()
    ports = {api: free_port() for api in PORT_KEYS.values()}
    props = {
        key: str(ports[api]) if key.endswith("_port") else f"http://127.0.0.1:{ports[api]}"
        for key, api in PORT_KEYS.items()
    }
    launch.write_properties(
        run_dir / "config.properties",
        launch.derived_config({**props, "model_store": str(default_store)}),
    )
    ports["gateway"] = free_port()
    tmpdir = run_dir / "tmp"
    tmpdir.mkdir()
    started = False
    try:
        assert serve.start(run_dir, run_dir / "config.properties", ports["gateway"], tmpdir) == 0
        started = True
        clients = run_dir / serve.CLIENTS_FILE
        assert oct(clients.stat().st_mode & 0o777) == "0o600"
        key = clients.read_text()
        assert re.fullmatch(rf"{serve.CLIENT_NAME}=[A-Za-z0-9_-]{{43}}\n", key)

        gateway_calls, torchserve_calls = readme_calls()
        answers = [json.loads(line) for line in run_block(gateway_calls, run_dir, ports)]
        assert [a["label"] if isinstance(a, dict) else [x["label"] for x in a] for a in answers] == [
            "positive",
            ["positive", "negative"],
            "positive",
        ]
        assert answers[0]["score"] > 0.9 and set(answers[0]["scores"]) == {"negative", "positive"}
        (form,) = [json.loads(line) for line in run_block(torchserve_calls, run_dir, ports)]
        assert form["label"] == "positive"

        # a second start finds both ports taken and says so, starting nothing
        assert serve.start(run_dir, run_dir / "config.properties", ports["gateway"], tmpdir) == 1
        # the key is kept across runs
        assert (run_dir / serve.CLIENTS_FILE).read_text() == key
    finally:
        if started:
            pid = int((run_dir / serve.GATEWAY_PID).read_text())
            assert serve.stop(run_dir, run_dir / "config.properties", tmpdir) == 0
            assert not port_is_open("127.0.0.1", ports["gateway"])
            assert not port_is_open("127.0.0.1", ports["inference"])
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        else:  # a start that failed halfway: stop what it left, the same way
            serve.stop(run_dir, run_dir / "config.properties", tmpdir)
