"""Generate Python gRPC stubs from the .proto files inside the installed TorchServe.

    python -m clients.grpc_stubs [build/grpc]      (make grpc; make test runs it)

The protos ship inside ts/frontend/model-server.jar, so the stubs always match the
TorchServe that is installed; nothing generated is committed. Writes inference_pb2*.py,
management_pb2*.py and google/rpc/status_pb2.py (which inference.proto imports) into
the output folder, and a .pth file into this Python's site-packages that puts the folder
on its import path (the generated modules import each other as top-level modules).
"""

from __future__ import annotations

import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

from common.paths import ROOT

DEFAULT_OUT = ROOT / "build" / "grpc"
PTH_FILE = Path(sysconfig.get_paths()["purelib"]) / "torchserve-grpc-stubs.pth"
PROTOS = {  # path inside the jar -> path for protoc
    "proto/inference.proto": "inference.proto",
    "proto/management.proto": "management.proto",
    "google/rpc/status.proto": "google/rpc/status.proto",
}


def server_jar() -> Path:
    import ts

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise FileNotFoundError(f"TorchServe's frontend jar not found at {jar}")
    return jar


def generate(out: Path = DEFAULT_OUT) -> Path:
    import grpc_tools
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(server_jar()) as jar:
        src = Path(tmp)
        for inside, target in PROTOS.items():
            (src / target).parent.mkdir(parents=True, exist_ok=True)
            (src / target).write_bytes(jar.read(inside))
        well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{src}",
                f"-I{well_known}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                *PROTOS.values(),
            ]
        )
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    PTH_FILE.write_text(f"{out.resolve()}\n")
    return out


def main(argv: list[str]) -> int:
    out = generate(Path(argv[0]) if argv else DEFAULT_OUT)
    print(f"gRPC stubs from {server_jar().name} written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
