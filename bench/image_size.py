"""What the image's bytes are: the figures of docs/container.md, measured.

    make image && .venv/bin/python -m bench.image_size [--image localhost/sentiment-serve:dev]

Reads the image's size from podman and, in a container of it (no network, removed at
once), the sizes of the venv, its largest packages, the archive and its model files, and
the rest (the Debian base with the JRE). Writes bench/results/image_size.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from common.paths import ROOT

DEFAULT_IMAGE = "localhost/sentiment-serve:dev"
# measured inside the image: path -> what it is
PARTS = {
    "/opt/venv": "the venv",
    "/usr/lib/jvm": "the JRE",
    "/app/model_store/sentiment.mar": "the archive",
}
SCRIPT = r"""
set -e
site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for p in /opt/venv /usr/lib/jvm /app/model_store/sentiment.mar; do echo "part $(du -sb "$p" | cut -f1) $p"; done
du -sb "$site"/* | sort -rn | head -12 | while read -r bytes path; do echo "package $bytes $(basename "$path")"; done
echo "file $(du -b "$site/torch/lib/libtorch_cpu.so" | cut -f1) libtorch_cpu.so"
cd /tmp && /opt/venv/bin/python -c '
import zipfile
for i in zipfile.ZipFile("/app/model_store/sentiment.mar").infolist():
    if i.file_size > 1_000_000:
        print("archived", i.file_size, i.filename)
'
"""


def podman(*args: str) -> str:
    env = {**os.environ, "CONTAINERS_CONF": str(ROOT / "container" / "containers.conf")}
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True, env=env).stdout


def mb(n: int) -> float:
    return round(n / 1e6, 1)


def measure(image: str) -> dict:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).strip())
    lines = podman("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", SCRIPT).splitlines()
    out: dict = {"image": image, "image_mb": mb(size)}
    out.update(parts_mb={}, largest_packages_mb={}, archive_files_mb={})
    for line in lines:
        kind, bytes_, name = line.split(" ", 2)
        if kind == "part":
            out["parts_mb"][PARTS[name]] = mb(int(bytes_))
        elif kind == "package":
            out["largest_packages_mb"][name] = mb(int(bytes_))
        elif kind == "file":
            out["largest_packages_mb"]["torch: " + name] = mb(int(bytes_))
        elif kind == "archived":
            out["archive_files_mb"][name] = mb(int(bytes_))
    known = out["parts_mb"]["the venv"] + out["parts_mb"]["the archive"]
    out["parts_mb"]["the rest: the Debian base (JRE included), the app"] = round(out["image_mb"] - known, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "image_size.json")
    args = parser.parse_args(argv)
    result = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), **measure(args.image)}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
