"""The naive baseline: the usual hand-written FastAPI app, one request at a time.

    MODEL_DIR=models/minilm-tweets uvicorn bench.baseline_app:app --port 8000

`async def /predict` tokenizes and runs the model inline for each request: no batching,
no worker pool, the event loop blocked during each forward pass. Same model, same torch
thread count and same max_length as the TorchServe handler, so the benchmark compares
serving strategies, not models.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

MODEL_DIR = os.environ["MODEL_DIR"]
MAX_LENGTH = int(os.environ.get("MAX_LENGTH", "128"))
torch.set_num_threads(int(os.environ.get("TORCH_THREADS", len(os.sched_getaffinity(0)))))

tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
model = AutoModelForSequenceClassification.from_pretrained(MODEL_DIR).eval()
labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
app = FastAPI()


class Item(BaseModel):
    text: str


@app.post("/predict")
async def predict(item: Item) -> dict:
    enc = tokenizer(item.text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.inference_mode():
        probs = torch.softmax(model(**enc).logits, dim=-1)[0].tolist()
    best = max(range(len(labels)), key=probs.__getitem__)
    return {"label": labels[best], "score": probs[best], "scores": dict(zip(labels, probs, strict=True))}
