"""The one list of what an archive packs beside its handler (handlers/archive-modules.txt,
read by archive.sh and bench/run.py) names every module the handler imports, and no other."""

from __future__ import annotations

from common.paths import HANDLERS, archive_modules
from helpers import handler_imports


def test_the_archive_list_is_what_the_handler_imports():
    listed = archive_modules()
    assert len(listed) == len(set(listed)), "a module listed twice"
    assert set(listed) == handler_imports(HANDLERS / "sentiment_handler.py")
