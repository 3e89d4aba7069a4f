"""Start TorchServe with the repo's config.properties and wait until the model answers.

    python -m serving.serve          (what `make serve` runs)

TorchServe runs in the background from the repo root, so key_file.json and logs/ land
there; `make stop` (torchserve --stop) ends it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from serving.client import KEY_FILE, TorchServeClient, read_properties

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config.properties"
LOG_CONFIG = REPO / "log4j2.xml"


def port_is_open(host_port: str) -> bool:
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def main() -> int:
    props = read_properties(CONFIG)
    inference = props["inference_address"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    host_port = urlsplit(inference).netloc
    if port_is_open(host_port):
        print(
            f"something already listens on {host_port}: a TorchServe from an earlier "
            "`make serve`? (`make stop` ends it)",
            file=sys.stderr,
        )
        return 1
    key_file = REPO / KEY_FILE
    started = time.time()
    # TorchServe's console output repeats logs/*.log; keep it out of the terminal.
    (REPO / "logs").mkdir(exist_ok=True)
    with open(REPO / "logs" / "console.log", "ab") as console:
        result = subprocess.run(
            ["torchserve", "--start", "--ncs", "--ts-config", str(CONFIG),
             "--log-config", str(LOG_CONFIG)],
            cwd=REPO, env=env, stdout=console, stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        print(
            "torchserve did not start (see logs/console.log); is it already running? (make stop)",
            file=sys.stderr,
        )
        return result.returncode
    deadline = started + 60
    while not (key_file.exists() and key_file.stat().st_mtime >= started - 1):
        if time.time() > deadline:
            print(f"TorchServe wrote no new {KEY_FILE}; see logs/", file=sys.stderr)
            return 1
        time.sleep(0.2)
    time.sleep(0.2)  # let the write finish
    client = TorchServeClient.from_config(CONFIG, key_file)
    try:
        client.wait_until_ready(timeout=180)
    except TimeoutError as e:
        print(f"{e}; see logs/model_log.log", file=sys.stderr)
        return 1
    print(
        f"\nTorchServe is up in {time.time() - started:.0f}s: {inference} (inference), "
        f"{props['management_address']} (management), {props['metrics_address']}/metrics.\n"
        "Try it:\n"
        "  KEY=$(python3 -c 'import json; print(json.load(open(\"key_file.json\"))[\"inference\"][\"key\"])')\n"
        f"  curl -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' "
        f"-d '{{\"text\": \"I love this\"}}' {inference}/predictions/sentiment\n"
        "Stop it with: make stop"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
