"""Explain a prediction: print the text with each word coloured by its attribution, or
write the same as one self-contained HTML file.

    sentiment-explain "I love this" ["This is terrible" ...] [--steps 50] [--html out.html]
                      [--url http://127.0.0.1:8000] [--key KEY | --key-file key_file.json]

Posts {"text": [...]} to /explanations/sentiment: through the gateway with a client key
(--key or $SENTIMENT_KEY), or straight to TorchServe with the inference key of a
key_file.json. Green words pushed the prediction toward its label, red ones away from it;
the stronger the colour, the larger the attribution. Standard library only.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.contract import GATEWAY_PORT
from common.net import http
from common.torchserve_files import read_keys


def colour(value: float, scale: float) -> tuple[int, int, int]:
    """Green for support of the predicted label, red against it; white at 0."""
    strength = min(1.0, abs(value) / scale) if scale else 0.0
    fade = int(255 * (1 - 0.75 * strength))
    return (fade, 255, fade) if value >= 0 else (255, fade, fade)


def _pieces(text: str, words: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(piece of the text, its word or None), covering the text exactly."""
    at = 0
    for word in words:
        if word["start"] > at:
            yield text[at : word["start"]], None
        yield text[word["start"] : word["end"]], word
        at = word["end"]
    if at < len(text):
        yield text[at:], None


def terminal(text: str, answer: dict[str, Any]) -> str:
    explanation = answer["explanation"]
    scale = max((abs(w["attribution"]) for w in explanation["words"]), default=0.0)
    out = []
    for piece, word in _pieces(text, explanation["words"]):
        if word is None:
            out.append(piece)
        else:
            r, g, b = colour(word["attribution"], scale)
            out.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{piece}\x1b[0m")
    header = (
        f"{answer['label']} {answer['score']:.3f} (baseline {explanation['baseline_score']:.3f}, "
        f"{explanation['steps']} steps, convergence delta {explanation['convergence_delta']:+.4f})"
    )
    top = sorted(explanation["words"], key=lambda w: -abs(w["attribution"]))[:5]
    ranked = ", ".join(f"{w['word']} {w['attribution']:+.3f}" for w in top)
    return f"{header}\n  {''.join(out)}\n  strongest: {ranked}"


def page(texts: list[str], answers: list[dict[str, Any]]) -> str:
    """One HTML file, no scripts or outside resources: each text with its words coloured."""
    rows = []
    for text, answer in zip(texts, answers, strict=True):
        explanation = answer["explanation"]
        scale = max((abs(w["attribution"]) for w in explanation["words"]), default=0.0)
        spans = []
        for piece, word in _pieces(text, explanation["words"]):
            if word is None:
                spans.append(html.escape(piece))
            else:
                r, g, b = colour(word["attribution"], scale)
                spans.append(
                    f'<span style="background:rgb({r},{g},{b})" title="{word["attribution"]:+.4f}">'
                    f"{html.escape(piece)}</span>"
                )
        rows.append(
            f'<section><p class="label">{html.escape(answer["label"])} {answer["score"]:.3f} '
            f"<small>(baseline {explanation['baseline_score']:.3f}, {explanation['steps']} steps, "
            f"convergence delta {explanation['convergence_delta']:+.4f})</small></p>"
            f'<p class="text">{"".join(spans)}</p></section>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Sentiment explanations</title>'
        "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto}section{margin:1.5em 0}"
        ".label{font-weight:bold;margin:0}.text{font-size:1.4em;line-height:1.8;margin:.3em 0}"
        "span{padding:.1em .15em;border-radius:.2em}small{font-weight:normal;color:#555}</style></head>"
        "<body><h1>Why the model said what it said</h1><p>Green words pushed the prediction toward its label, "
        "red ones away from it (layer integrated gradients on the input embeddings; hover for the value)."
        "</p>" + "".join(rows) + "</body></html>\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sentiment-explain", description=__doc__.splitlines()[0])
    p.add_argument("texts", nargs="+")
    p.add_argument("--steps", type=int, help="integration steps (the server's default otherwise)")
    p.add_argument("--html", type=Path, help="write the explanations to this HTML file")
    p.add_argument(
        "--url", default=f"http://127.0.0.1:{GATEWAY_PORT}", help="the gateway, or TorchServe's inference address"
    )
    p.add_argument("--model", default="sentiment")
    p.add_argument("--key", default=os.environ.get("SENTIMENT_KEY"), help="a gateway client key")
    p.add_argument("--key-file", type=Path, help="TorchServe's key_file.json (its inference key)")
    args = p.parse_args(argv)
    key = read_keys(args.key_file)["inference"] if args.key_file else args.key
    if not key:
        p.error("give a key: --key (or $SENTIMENT_KEY) for the gateway, --key-file for TorchServe")
    body = {"text": args.texts, **({"steps": args.steps} if args.steps else {})}
    status, answer = http(
        f"{args.url}/explanations/{args.model}",
        "POST",
        json.dumps(body).encode(),
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=300,
    )
    if status != 200:
        print(f"the server answered {status}: {answer.decode(errors='replace')[:500]}", file=sys.stderr)
        return 1
    answers = json.loads(answer)
    if args.html:
        args.html.write_text(page(args.texts, answers))
        print(f"wrote {args.html}", file=sys.stderr)
    for text, one in zip(args.texts, answers, strict=True):
        print(terminal(text, one))
    return 0


if __name__ == "__main__":
    sys.exit(main())
