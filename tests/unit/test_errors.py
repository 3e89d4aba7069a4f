"""The handler's errors (handlers/errors.py) and the README's error table agree: each
class has its row, under its status, and every type the table names is a class or is
TorchServe's own."""

from __future__ import annotations

import re

import errors
from common.paths import ROOT


def readme_error_rows() -> list[tuple[str, list[str], str]]:
    """(status, the types in backticks, when) of each row of the README's error table."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Errors") :].split("\n\n")[2]
    rows = []
    for line in table.splitlines()[2:]:
        status, kinds, when = (cell.strip() for cell in line.strip("|").split("|", 2))
        rows.append((status, re.findall(r"`(\w+)`", kinds), when))
    return rows


def test_every_error_class_has_its_row_under_its_status():
    rows = readme_error_rows()
    for error in errors.ALL:
        statuses = [status for status, kinds, _ in rows if error.kind in kinds]
        assert statuses == [str(error.status)], (error.kind, statuses)


def test_every_type_in_the_table_is_a_class_or_torchserves():
    classes = {error.kind for error in errors.ALL}
    for status, kinds, when in readme_error_rows():
        for kind in kinds:
            assert kind in classes or "TorchServe" in when or kind.endswith("Exception"), (status, kind)


def test_a_class_is_its_type_and_its_body():
    error = errors.TooManyTexts("the list has 40 items; the limit is 32")
    assert isinstance(error, errors.RequestError)
    assert error.body() == {"code": 413, "type": "TooManyTexts", "message": "the list has 40 items; the limit is 32"}
    assert len({e.kind for e in errors.ALL}) == len(errors.ALL) >= 13


def test_the_limits_the_docs_quote_are_the_shipped_model_configs():
    """A handler option quoted with its value ("`max_text_chars` (10,000 characters)") in the
    README or docs/ has the value model-config.yaml ships: the limits are set there once
    (a value in other units, "(1 s)", is not read)."""
    import yaml

    from text_classification import HandlerOptions

    shipped = HandlerOptions.from_model_yaml(yaml.safe_load((ROOT / "model-config.yaml").read_text()))
    quoted = []
    option = re.compile(r"`(\w+)` \((?:model-config\.yaml, )?(\d[\d,]*)(?: ms| characters)?\)")
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name, value in option.findall(doc.read_text()):
            if hasattr(shipped, name):
                quoted.append(name)
                assert getattr(shipped, name) == int(value.replace(",", "")), (doc.name, name, value)
    assert {"max_texts_per_request", "max_text_chars", "queue_budget_ms"} <= set(quoted)
