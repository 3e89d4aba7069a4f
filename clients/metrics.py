"""Prometheus text format, as TorchServe's metrics port serves it, read into numbers."""

from __future__ import annotations

import re


def parse_samples(text: str) -> dict[str, float]:
    """{'name{labels}': value} of every sample line."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of a metric's samples over the label sets that have `labels`."""
    pattern = re.compile(re.escape(name) + r"(\{|$)")
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items() if pattern.match(k) and all(w in k for w in wanted))
