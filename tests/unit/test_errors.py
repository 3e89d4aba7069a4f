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
