"""wrk (Debian's) against a URL with the benchmark's bodies: an independent load generator
to check bench/loadgen.py's figures against."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(
    url: str, bodies: list[bytes], concurrency: int, duration: float, header: tuple[str, str] | None = None
) -> dict:
    binary = shutil.which("wrk")
    if binary is None:
        raise FileNotFoundError("wrk is missing: apt-get install wrk (make bench does)")
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl") as f:
        f.write(b"".join(b + b"\n" for b in bodies))
        f.flush()
        command = [
            binary,
            "-t1",
            f"-c{concurrency}",
            f"-d{int(duration)}s",
            "--latency",
            "-s",
            str(SCRIPT),
            url,
            "--",
            f.name,
            *(header or ()),
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    percentiles = dict(re.findall(r"\b(50|99)%\s+([\d.]+(?:us|ms|s|m))\b", out))
    errors = int(non_2xx.group(1)) if non_2xx else 0
    return {
        "concurrency": concurrency,
        "seconds": duration,
        "requests": total,
        "errors": errors,
        "throughput_rps": rps * (1 - errors / total if total else 1),
        "p50_ms": _ms(percentiles["50"]) if "50" in percentiles else float("nan"),
        "p99_ms": _ms(percentiles["99"]) if "99" in percentiles else float("nan"),
        "output": out[-600:],
    }
