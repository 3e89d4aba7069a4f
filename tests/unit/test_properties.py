"""config.properties read as TorchServe's frontend reads it (java.util.Properties.load),
and written so that it reads back the same (common/torchserve_files.py)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from common.torchserve_files import format_properties, parse_properties


def test_a_models_value_continued_over_lines_as_torchserve_configs_write_it():
    text = (
        "inference_address=http://127.0.0.1:8080\n"
        "models={\\\n"
        '  "sentiment": {\\\n'
        '    "1.0": {"marName": "sentiment.mar", "batchSize": 8}\\\n'
        "  }\\\n"
        "}\n"
        "load_models=all\n"
    )
    props = parse_properties(text)
    assert props["inference_address"] == "http://127.0.0.1:8080"
    assert json.loads(props["models"]) == {"sentiment": {"1.0": {"marName": "sentiment.mar", "batchSize": 8}}}
    assert props["load_models"] == "all"


def test_separators_comments_and_escapes():
    text = (
        "# a comment\n"
        "! another \\\n"  # a comment is never continued
        "a = 1\n"
        "b:2\n"
        "c   3\n"
        "d\n"
        "e=\\\\tail\\\\\\\\\n"  # an even number of backslashes at the end: no continuation
        "f=x\\tx\\u00e9\\uD83D\\uDE00\n"
        "key\\=with\\:separators = v\n"
        "\\#not-a-comment = 4\n"
        "g=one \\\r\n    two\r"  # \r\n and \r end lines too
        "a=later\n"
    )
    assert parse_properties(text) == {
        "a": "later",
        "b": "2",
        "c": "3",
        "d": "",
        "e": "\\tail\\\\",
        "f": "x\tx\u00e9\U0001f600",
        "key=with:separators": "v",
        "#not-a-comment": "4",
        "g": "one two",
    }


text_values = st.text(st.characters(codec="utf-8"), max_size=40)


@given(st.dictionaries(text_values.filter(bool), text_values, max_size=8))
def test_what_is_written_reads_back_the_same(props):
    written = format_properties(props)
    assert written.isascii()
    assert parse_properties(written) == props
