"""What a worker's memory is made of, step by step, for each backend.

    PYTHONPATH=handlers .venv/bin/python -m bench.worker_memory [--out bench/results/worker_memory.json]

Each backend in a fresh process of its own that does what a TorchServe worker with this
handler does, in order, and records the process's unique (USS) and resident (RSS) memory
after each step:

  1. Python alone;
  2. TorchServe's worker imports (ts.protocol.otf_message_handler imports torch, whatever
     the backend) and ts's BaseHandler: the floor every worker pays, the no-op handler's;
  3. the tokenizer, loaded as the handler loads it (text_classification.TextTokenizer:
     the `tokenizers` library alone, no transformers);
  4. the model: ONNX Runtime's session on the archive's int8 graph, or PyTorch fp32
     weights (and the int8 quantized copy for torch-int8);
  5. after the warm-up passes and a run over 200 held-out tweets at the shipped batch
     and micro-batch sizes: the arenas and caches a serving worker holds. This is the
     whole of a worker with the handler option `explanations: false`;
  6. the explainer, loaded as the handler's initialize() loads it before the worker is
     ready (explanations.explainer_for: transformers, Captum and transformers' tokenizer,
     and for the ONNX Runtime backend the fp32 PyTorch copy of the archive's weights; the
     PyTorch fp32 backend explains on its served model): what `explanations: true`, the
     default, adds to every worker from its start;
  7. after one explanation of a 10-word sentence (50 steps), then 8. after one of the
     longest text an explanation takes (explain_max_tokens, 64 tokens, 50 steps): what an
     explanation leaves behind in a worker, preloaded explainer or not, once its autograd
     buffers are freed and the freed heap given back (explanations.release_freed_heap):
     what a memory limit must allow.

Steps 5 and 6 are a worker's memory without and with the preloaded explainer (the
difference is printed). The model's own bytes (its file on disk) are recorded beside it.
Unique memory (USS) is what this process alone holds; the pages of shared libraries
(torch's above all) count there only while no other process maps the same files, so run
it on a quiet machine; two workers of one server share those pages, which PSS splits
between them. The handler's modules are imported from the unpacked archive, as a worker
imports them: archives built from handlers/ as it is (`make bench` rebuilds them). Writes
one JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from common.paths import MODEL_STORE, ROOT

VARIANTS = {  # name: (archive, handler options)
    "onnxruntime-int8 (shipped)": ("sentiment.mar", {"backend": "onnxruntime", "quantize": "int8"}),
    "torch-fp32": ("sentiment-torch.mar", {"backend": "torch", "quantize": "none"}),
}

STEPS = r"""
import json, os, sys
import psutil
me = psutil.Process()
out = []
def mark(step, **extra):
    info = me.memory_full_info()
    sizes = {k + "_mib": round(getattr(info, k) / 2**20, 1) for k in ("uss", "pss", "rss")}
    out.append({"step": step, **sizes, **extra})
model_dir, options, texts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
mark("python")
import ts.protocol.otf_message_handler  # what every TorchServe worker imports: torch with it
from ts.torch_handler.base_handler import BaseHandler
mark("TorchServe worker imports (torch included)")
import backends, text_classification as tc
tokenizer = tc.TextTokenizer(model_dir)
mark("tokenizer")
opts = tc.HandlerOptions(torch_threads=1, **options)
backend = backends.load(model_dir, opts, None, False, 1)
mark("model loaded")
values = tokenizer.pad_values
def forward(batch):
    encodings = tokenizer.tokenize(batch, 128)
    for group in tc.micro_batches([len(e["input_ids"]) for e in encodings], options["micro_batch_size"]):
        backend.probabilities(tc.pad([encodings[i] for i in group], values, False))
for i in range(0, len(texts), 16):
    forward(texts[i:i + 16])
forward([" ".join(["warm"] * 120)] * 16)
mark("after serving 200 texts and a full batch at max_length")
import explanations
labels = tc.label_names(backend.config.id2label, backend.config.num_labels, None)
explainer = explanations.explainer_for(backend, opts, model_dir, labels, 1)
mark("explainer loaded, as initialize() loads it (explanations: true)")
def served(text):
    return backend.probabilities(tc.pad(tokenizer.tokenize([text], 128), values, False))[0]
import time
release, trims = explanations.release_freed_heap, []
def timed_release():  # what giving the freed heap back costs an explanation
    started = time.perf_counter()
    release()
    trims.append(round((time.perf_counter() - started) * 1000, 1))
explanations.release_freed_heap = timed_release
def explain(text):
    started = time.perf_counter()
    explainer.explain(text, 50, 64, served)
    return {"explain_ms": round((time.perf_counter() - started) * 1000), "heap_release_ms": trims[-1]}
mark("after one explanation (10 words, 50 steps)", **explain("the food was great but the service was awful"))
mark("after one explanation at explain_max_tokens (64 tokens, 50 steps)", **explain(" ".join(["good"] * 62)))
print(json.dumps(out))
"""


def measure(archive: Path, options: dict, texts: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        zipfile.ZipFile(archive).extractall(tmp)
        env = dict(os.environ, PYTHONPATH=f"{ROOT / 'handlers'}:{ROOT}", TOKENIZERS_PARALLELISM="false")
        done = subprocess.run(
            [sys.executable, "-c", STEPS, tmp, json.dumps(options), json.dumps(texts)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=tmp,
        )
        steps: list[dict] = json.loads(done.stdout.strip().splitlines()[-1])
        model_files = {
            p.name: round(p.stat().st_size / 2**20, 1)
            for p in Path(tmp).iterdir()
            if p.suffix in (".onnx", ".safetensors")
        }
    return [{**s, "model_files_mib": model_files} if i == 3 else s for i, s in enumerate(steps)]


def main(argv: list[str] | None = None) -> int:
    import yaml

    from training.tweets import split_tweets

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "worker_memory.json")
    args = parser.parse_args(argv)
    shipped = yaml.safe_load((ROOT / "model-config.yaml").read_text())["handler"]
    texts = [t.text for t in split_tweets()[1][:200]]
    result = {}
    for name, (archive, options) in VARIANTS.items():
        micro = shipped["micro_batch_size"] if options["quantize"] == "int8" else 8
        result[name] = measure(MODEL_STORE / archive, {**options, "micro_batch_size": micro}, texts)
        print(name, json.dumps(result[name], indent=1))
        without, with_explainer = result[name][4], result[name][5]  # steps 5 and 6 of the docstring
        print(
            f"{name}: the preloaded explainer adds "
            + ", ".join(
                f"{k} {with_explainer[k + '_mib'] - without[k + '_mib']:+.1f} MiB" for k in ("uss", "pss", "rss")
            )
        )
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
