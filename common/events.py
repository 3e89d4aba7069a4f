"""One JSON object a line on standard error, for the processes of the pod (the TorchServe
supervisor, the gateway runner) and the tools beside them: what a cluster's log collector
reads. Messages are the caller's own words: never a request's text or a key."""

from __future__ import annotations

import json
import sys
import time


def log(source: str, message: str, **fields: object) -> None:
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source": source, "message": message, **fields}
    print(json.dumps(record), file=sys.stderr, flush=True)
