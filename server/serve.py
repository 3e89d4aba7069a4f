"""Start TorchServe with the repo's config.properties and wait until the model answers.

    python -m server.serve          (what `make serve` runs)

TorchServe runs in the background from the repo root, so key_file.json and logs/ land
there; `make stop` (torchserve --stop) ends it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from urllib.parse import urlsplit

from clients.torchserve import TorchServeClient
from common.net import port_is_open
from common.paths import CONFIG, ROOT
from common.torchserve_files import KEY_FILE, read_properties
from server import launch


def main() -> int:
    props = read_properties(CONFIG)
    inference = props["inference_address"]
    address = urlsplit(inference)
    if port_is_open(address.hostname or "127.0.0.1", address.port or 8080):
        print(
            f"something already listens on {address.netloc}: a TorchServe from an earlier "
            "`make serve`? (`make stop` ends it)",
            file=sys.stderr,
        )
        return 1
    started = time.time()
    # TorchServe's console output repeats logs/*.log; keep it out of the terminal.
    (ROOT / "logs").mkdir(exist_ok=True)
    with open(ROOT / "logs" / "console.log", "ab") as console:
        result = subprocess.run(
            launch.command(CONFIG, foreground=False),
            cwd=ROOT,
            env=launch.environment(),
            stdout=console,
            stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        print("torchserve did not start (see logs/console.log); is it already running? (make stop)", file=sys.stderr)
        return result.returncode
    try:
        launch.wait_for_keys(ROOT, started, timeout=60)
        time.sleep(0.2)  # let the write finish
        TorchServeClient.from_config(CONFIG, ROOT / KEY_FILE).wait_until_ready(timeout=180)
    except TimeoutError as e:
        print(f"{e}; see logs/", file=sys.stderr)
        return 1
    print(
        f"\nTorchServe is up in {time.time() - started:.0f}s: {inference} (inference), "
        f"{props['management_address']} (management), {props['metrics_address']}/metrics.\n"
        "Try it:\n"
        '  KEY=$(python3 -c \'import json; print(json.load(open("key_file.json"))["inference"]["key"])\')\n'
        f"  curl -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' "
        f'-d \'{{"text": "I love this"}}\' {inference}/predictions/sentiment\n'
        "Stop it with: make stop"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
