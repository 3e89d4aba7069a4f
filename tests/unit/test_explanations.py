"""Explanations on the tiny model: word pieces merged into the text's words, attributions
that add up, limits, bad input, a batch mixing explanations and predictions, the explainer
loaded by initialize() (none, and no transformers or Captum, with `explanations: false`),
and the ONNX Runtime backend explaining from the archive's weights. (Direction on real
sentences, and the explainer loaded before a real worker is ready: tests/integration.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from handler_helpers import initialized_handler, run_batch

from bodies import Limits
from errors import RequestError
from explanations import ExplainLimits, merge_word_pieces, parse_explanation

JSON = "application/json"
EXPLAIN = {"explain": "True"}


def test_word_pieces_merge_into_the_words_of_the_text():
    text = "unbelievably good!"
    # [CLS] un ##bel ##ievably good ! [SEP]
    offsets = [(0, 0), (0, 2), (2, 5), (5, 12), (13, 17), (17, 18), (0, 0)]
    word_ids = [None, 0, 0, 0, 1, 2, None]
    words = merge_word_pieces(text, offsets, word_ids, [9.0, 0.1, 0.2, 0.3, 0.5, -0.05, 9.0])
    assert words == [
        {"word": "unbelievably", "start": 0, "end": 12, "attribution": pytest.approx(0.6)},
        {"word": "good", "start": 13, "end": 17, "attribution": 0.5},
        {"word": "!", "start": 17, "end": 18, "attribution": -0.05},
    ]


LIMITS = ExplainLimits(steps=20, max_steps=40, max_texts=2, max_tokens=16)


@pytest.mark.parametrize(
    "body, content_type, texts, steps",
    [
        (b'{"text": "I love it"}', JSON, ("I love it",), 20),
        (b'{"text": ["a", "b"], "steps": 30}', JSON, ("a", "b"), 30),
        (b"plain text", "text/plain", ("plain text",), 20),
    ],
)
def test_explanation_bodies(body, content_type, texts, steps):
    request, got_steps = parse_explanation({"body": body}, Limits(), LIMITS, content_type)
    assert (request.texts, got_steps) == (texts, steps)


@pytest.mark.parametrize(
    "body, status, kind",
    [
        (b'{"text": "a", "steps": 41}', 413, "TooManySteps"),
        (b'{"text": "a", "steps": 1}', 400, "InvalidInput"),
        (b'{"text": "a", "steps": "many"}', 400, "InvalidInput"),
        (b'{"text": "a", "steps": true}', 400, "InvalidInput"),
        (b'{"text": ["a", "b", "c"]}', 413, "TooManyTexts"),
        (b'{"text": "a", "lang": "en"}', 400, "InvalidInput"),
        (b'{"text": ', 400, "InvalidJSON"),
        (b'{"text": ""}', 400, "EmptyText"),
    ],
)
def test_explanation_refusals(body, status, kind):
    with pytest.raises(RequestError) as info:
        parse_explanation({"body": body}, Limits(), LIMITS, JSON)
    assert (info.value.status, info.value.kind) == (status, kind)


@pytest.fixture(scope="module")
def handler_and_context(tiny_model_dir):
    return initialized_handler(tiny_model_dir, {"explain_steps": 32, "explain_max_tokens": 24})


def test_attributions_add_up_to_the_prediction_minus_the_baseline(handler_and_context):
    handler, context = handler_and_context
    ((status, answer, _),) = run_batch(handler, context, [({"body": b'{"text": "I love this film"}'}, JSON, EXPLAIN)])
    assert status == 200
    explanation = answer["explanation"]
    assert [w["word"] for w in explanation["words"]] == ["I", "love", "this", "film"]
    assert explanation["target"] == answer["label"] and explanation["steps"] == 32
    total = sum(w["attribution"] for w in explanation["words"])
    # the fp32 PyTorch model is the one served here: what is explained is what was answered
    assert explanation["target_score"] == pytest.approx(answer["score"], abs=1e-5)
    assert total == pytest.approx(explanation["target_score"] - explanation["baseline_score"], abs=1e-3)
    assert abs(explanation["convergence_delta"]) < 1e-3


def test_a_batch_mixing_explanations_and_predictions(handler_and_context):
    handler, context = handler_and_context
    alone = run_batch(handler, context, [({"body": b'{"text": "fine"}'}, JSON)])[0][1]
    answers = run_batch(
        handler,
        context,
        [
            ({"body": b'{"text": "fine"}'}, JSON),
            ({"body": b'{"text": ["good", "bad"]}'}, JSON, EXPLAIN),
            ({"body": json.dumps({"text": "word " * 30}).encode()}, JSON, EXPLAIN),  # over 24 tokens
            ({"body": b'{"text": '}, JSON, EXPLAIN),
            ({"body": b'{"text": "fine"}'}, JSON),
        ],
    )
    assert [a[0] for a in answers] == [200, 200, 413, 400, 200]
    assert answers[0][1] == alone and answers[4][1] == alone
    assert len(answers[1][1]) == 2 and all("explanation" in a for a in answers[1][1])
    assert answers[2][1]["type"] == "TooManyTokens" and answers[3][1]["type"] == "InvalidJSON"


# in a fresh interpreter, as a worker: which of transformers and Captum are imported after
# initialize(), and after a prediction and an explanation, with their statuses
WORKER_MODULES = """
import json, sys
sys.path[:0] = ["handlers", "tests/unit", "tests"]
from handler_helpers import initialized_handler, run_batch
def loaded():
    return sorted({m.split(".")[0] for m in sys.modules} & {"transformers", "captum"})
handler, context = initialized_handler(sys.argv[1], json.loads(sys.argv[2]))
after_initialize = loaded()
answers = run_batch(
    handler,
    context,
    [({"body": b"fine"}, "text/plain"), ({"body": b"fine"}, "text/plain", {"explain": "True"})],
)
print(json.dumps([after_initialize, [[a[0], a[1].get("type")] for a in answers], loaded()]))
"""


def worker_modules(model_dir, options):
    from common.paths import ROOT

    done = subprocess.run(
        [sys.executable, "-c", WORKER_MODULES, str(model_dir), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


ONNX_INT8 = {"backend": "onnxruntime", "quantize": "int8", "micro_batch_size": 1, "explain_steps": 8}


def test_initialize_loads_the_explainer_so_no_batch_waits_for_it(onnx_model_dir):
    """The explainer (transformers, Captum, the fp32 copy) is loaded by initialize(), which
    TorchServe completes before the worker gets a request: the first explanation's batch
    loads nothing, and its prediction is answered beside it."""
    after_initialize, answers, after_batch = worker_modules(onnx_model_dir["int8"], ONNX_INT8)
    assert after_initialize == ["captum", "transformers"]
    assert answers == [[200, None], [200, None]]
    assert after_batch == after_initialize


def test_with_explanations_off_a_worker_never_imports_transformers_or_captum(onnx_model_dir):
    """`explanations: false` keeps an ONNX Runtime worker as small as before the explainer
    was preloaded (no transformers, no Captum, no fp32 copy); an explanation gets a 404."""
    after_initialize, answers, after_batch = worker_modules(
        onnx_model_dir["int8"], {**ONNX_INT8, "explanations": False}
    )
    assert after_initialize == [] and after_batch == []
    assert answers == [[200, None], [404, "ExplanationsDisabled"]]


def test_the_explainer_is_loaded_once_at_initialize_and_kept(tiny_model_dir):
    handler, context = initialized_handler(tiny_model_dir, {"explain_steps": 8})
    explainer = handler.explainer
    assert explainer is not None and explainer.model is handler.backend.model  # torch fp32: no second copy
    ((status, _, _),) = run_batch(handler, context, [({"body": b"fine"}, "text/plain", EXPLAIN)])
    assert status == 200 and handler.explainer is explainer


def test_explanations_off_answers_each_explanation_404_and_predictions_as_before(tiny_model_dir):
    handler, context = initialized_handler(tiny_model_dir, {"explanations": False})
    assert handler.explainer is None
    answers = run_batch(
        handler,
        context,
        [
            ({"body": b'{"text": "fine"}'}, JSON),
            ({"body": b'{"text": '}, JSON, EXPLAIN),  # off whatever the body
            ({"body": b'{"text": "fine"}'}, JSON, EXPLAIN),
        ],
    )
    assert [(a[0], a[1].get("type")) for a in answers] == [
        (200, None),
        (404, "ExplanationsDisabled"),
        (404, "ExplanationsDisabled"),
    ]


@pytest.mark.parametrize("value", ["no", 0, None])
def test_the_explanations_option_is_true_or_false(value):
    from text_classification import HandlerOptions

    with pytest.raises(ValueError, match="explanations must be true or false"):
        HandlerOptions.from_model_yaml({"handler": {"explanations": value}})


def test_onnxruntime_explains_from_the_archives_weights(onnx_model_dir):
    handler, context = initialized_handler(
        onnx_model_dir["int8"], {"backend": "onnxruntime", "quantize": "int8", "explain_steps": 16}
    )
    ((status, answer, _),) = run_batch(handler, context, [({"body": b"I love it"}, "text/plain", EXPLAIN)])
    assert status == 200 and [w["word"] for w in answer["explanation"]["words"]] == ["I", "love", "it"]
    assert type(handler.explainer.model).__name__ == "BertForSequenceClassification"
    # label and scores are the served int8 graph's, the very ones /predictions answers
    ((_, predicted, _),) = run_batch(handler, context, [({"body": b"I love it"}, "text/plain")])
    assert {k: answer[k] for k in ("label", "score", "scores")} == predicted
    assert answer["explanation"]["target"] == predicted["label"]


def test_attributions_are_toward_the_served_label_even_where_the_fp32_copy_disagrees(handler_and_context):
    """A served model that ranks the labels the other way round from the fp32 copy: the
    answer is the served one, and the attributions explain that label, not the copy's."""
    handler, _ = handler_and_context
    explainer = handler._explainer()  # loaded by initialize()
    own = explainer.explain("I love this film", 8, 24, handler._served)
    flipped = explainer.explain("I love this film", 8, 24, lambda text: list(reversed(handler._served(text))))
    assert flipped["label"] != own["label"] and flipped["explanation"]["target"] == flipped["label"]
    negative, positive = own["scores"]
    assert flipped["scores"] == {negative: own["scores"][positive], positive: own["scores"][negative]}
    # toward the other label: the copy's probabilities of the two labels add up to one
    assert flipped["explanation"]["target_score"] == pytest.approx(1 - own["explanation"]["target_score"], abs=1e-5)
    for a, b in zip(own["explanation"]["words"], flipped["explanation"]["words"], strict=True):
        assert b["attribution"] == pytest.approx(-a["attribution"], abs=1e-4)
