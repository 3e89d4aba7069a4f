"""Call the sentiment model over TorchServe's gRPC inference API (port 7070).

    python -m clients.grpc_client "I love this" ["This is terrible" ...] [--version 2.0]

Same inputs and answers as REST: the request carries the JSON body {"text": ...} and the
answer is the handler's JSON. The inference key goes in the `authorization` metadata as
"Bearer <key>". Stubs come from `python -m clients.grpc_stubs` (make grpc), generated from
the protos inside the installed TorchServe.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import grpc

from common.paths import CONFIG
from common.torchserve_files import KEY_FILE, read_keys, read_properties


def _stubs() -> tuple[Any, Any]:
    try:
        import inference_pb2
        import inference_pb2_grpc
    except ImportError as e:
        raise ImportError("no gRPC stubs on the import path: run `make grpc` (python -m clients.grpc_stubs)") from e
    return inference_pb2, inference_pb2_grpc


class GrpcError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def _is_error(answer: object) -> bool:
    """The handler's error body, {"code": 4xx, "type": ..., "message": ...}; predictions
    are a {"label", "score", "scores"} object or a list of them."""
    return isinstance(answer, dict) and {"code", "type", "message"} <= answer.keys()


class SentimentGrpcClient:
    def __init__(self, target: str, inference_key: str):
        self._pb2, pb2_grpc = _stubs()
        self._channel = grpc.insecure_channel(target)
        self._stub = pb2_grpc.InferenceAPIsServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {inference_key}"),)

    @classmethod
    def from_config(cls, config: Path, key_file: Path) -> SentimentGrpcClient:
        props = read_properties(config)
        target = f"{props.get('grpc_inference_address', '127.0.0.1')}:{props.get('grpc_inference_port', '7070')}"
        return cls(target, read_keys(key_file)["inference"])

    def request(self, payload: object, model: str = "sentiment", version: str = "") -> Any:
        """The PredictionsRequest for a JSON payload, as REST would POST it."""
        return self._pb2.PredictionsRequest(
            model_name=model, model_version=version, input={"body": json.dumps(payload).encode()}
        )

    def predict(self, payload: object, model: str = "sentiment", version: str = "", timeout: float = 30) -> object:
        """The handler's JSON answer for {"text": ...}; GrpcError when TorchServe or the
        handler refuses (bad input: INVALID_ARGUMENT with the handler's JSON error as details)."""
        try:
            response = self._stub.Predictions(
                self.request(payload, model, version), metadata=self._metadata, timeout=timeout
            )
        except grpc.RpcError as e:
            raise GrpcError(e.code(), e.details()) from None
        answer = json.loads(response.prediction)
        if _is_error(answer):
            # TorchServe 0.12's gRPC API drops the status the handler sets per request and
            # answers OK with the error body, so the client turns it back into an error.
            raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, response.prediction.decode())
        return answer

    @property
    def stub(self) -> Any:
        return self._stub

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SentimentGrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.grpc_client", description=__doc__.splitlines()[0])
    p.add_argument("texts", nargs="+")
    p.add_argument("--version", default="", help="model version (default: the default version)")
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--key-file", type=Path, default=Path(KEY_FILE))
    args = p.parse_args(argv)
    payload = {"text": args.texts[0] if len(args.texts) == 1 else args.texts}
    with SentimentGrpcClient.from_config(args.config, args.key_file) as client:
        try:
            print(json.dumps(client.predict(payload, version=args.version)))
        except GrpcError as e:
            print(f"TorchServe answered {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
