""".ci/locks.py, the checks of the lock files: a lock parses into exactly its hashed pins,
an input's pins are found in it, and an environment's packages are compared with it (what
make test-unit runs first); the repository's own locks pass the offline checks."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from common.paths import ROOT

_spec = importlib.util.spec_from_file_location("locks", ROOT / ".ci" / "locks.py")
assert _spec is not None and _spec.loader is not None
locks = importlib.util.module_from_spec(_spec)
sys.modules["locks"] = locks  # dataclasses look their module up by name
_spec.loader.exec_module(locks)

H1 = "sha256:" + "a" * 64
H2 = "sha256:" + "b" * 64

LOCK = f"""\
# The lock of requirements.txt
#
#    make lock
#
Jinja2==3.1.6 \\
    --hash={H1} \\
    --hash={H2}
    # via
    #   -r requirements.txt
    #   torch
torch==2.13.0+cpu \\
    --hash={H1}
    # via -r requirements.txt
typing_extensions==4.16.0 --hash={H2}
"""


def test_a_lock_parses_into_its_canonical_names_versions_and_hashes():
    entries = locks.parse_lock(LOCK)
    assert {n: e.version for n, e in entries.items()} == {
        "jinja2": "3.1.6",
        "torch": "2.13.0+cpu",
        "typing-extensions": "4.16.0",
    }
    assert entries["jinja2"].hashes == (H1, H2)
    assert entries["torch"].hashes == (H1,)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("numpy==2.4.6\n", "has no hash"),
        (f"numpy>=2 --hash={H1}\n", "not a pinned, hashed entry"),
        (f"-e . --hash={H1}\n", "not a pinned, hashed entry"),
        ("--extra-index-url https://example.org/simple\n", "not a pinned, hashed entry"),
        ("numpy==2.4.6 --hash=md5:0123\n", "not sha256"),
        (f"numpy==2.4.6 --hash={H1}\nNumPy==2.4.6 --hash={H2}\n", "numpy locked twice"),
        # a continuation cut by a comment leaves the hashes out of the entry, as pip reads it
        (f"numpy==2.4.6 \\\n# via x\n    --hash={H1}\n", "has no hash"),
    ],
)
def test_a_lock_entry_that_is_not_one_hashed_pin_is_refused(text, complaint):
    with pytest.raises(locks.LockError, match=complaint):
        locks.parse_lock(text, "x.lock")


def test_inputs_follow_includes_and_strip_comments_and_extras(tmp_path):
    (tmp_path / "base.txt").write_text("torch==2.13.0+cpu  # the CPU build\nPyYAML==6.0.4\n")
    (tmp_path / "dev.txt").write_text(
        "# tools\n-r base.txt\n--extra-index-url https://example.org/simple\nuvicorn[standard]==0.54.0\nrich>=13\n"
    )
    assert locks.read_inputs(tmp_path / "dev.txt") == {
        "torch": "2.13.0+cpu",
        "pyyaml": "6.0.4",
        "uvicorn": "0.54.0",
        "rich": None,
    }


def test_input_pins_must_be_locked_at_their_version():
    locked = {"torch": "2.13.0+cpu", "pyyaml": "6.0.4", "rich": "15.0.0"}
    assert locks.compare_pins({"torch": "2.13.0+cpu", "rich": None}, locked, "r.txt") == []
    assert locks.compare_pins({"pyyaml": "6.0.3", "numpy": "2.4.6", "torch": "2.13.0"}, locked, "r.txt") == [
        "r.txt: numpy is not in its lock",
        "r.txt: pyyaml==6.0.3, its lock has 6.0.4",
        "r.txt: torch==2.13.0, its lock has 2.13.0+cpu",
    ]


def test_an_environment_is_compared_with_its_lock_both_ways():
    locked = {"jinja2": "3.1.6", "torch": "2.13.0+cpu", "typing-extensions": "4.16.0", "pip": "26.3"}
    same = [("Jinja2", "3.1.6"), ("torch", "2.13.0+cpu"), ("typing_extensions", "4.16.0"), ("pip", "26.3")]
    assert locks.compare_installed(same, locked) == []
    assert locks.compare_installed([*same, ("sentiment-torchserve", "0.3.0")], locked, ["sentiment_torchserve"]) == []

    drifted = [("jinja2", "3.1.5"), ("torch", "2.13.0+cpu"), ("typing-extensions", "4.16.0"), ("sympy", "1.14.0")]
    assert locks.compare_installed(drifted, locked) == [
        "jinja2==3.1.5: installed, the lock has 3.1.6",
        "sympy==1.14.0: installed, not in the lock",
        "pip==26.3: locked, not installed",
    ]
    # two metadata folders of one package (a half-removed install)
    assert locks.compare_installed([*same, ("jinja2", "3.1.5")], locked) == [
        "jinja2: installed more than once (3.1.5, 3.1.6)"
    ]


def test_an_optional_lock_allows_its_packages_at_their_versions_only():
    locked = {"torch": "2.13.0+cpu"}
    bench = {"uvicorn": "0.54.0"}
    assert locks.compare_installed([("torch", "2.13.0+cpu")], locked, optional=bench) == []
    assert locks.compare_installed([("torch", "2.13.0+cpu"), ("uvicorn", "0.54.0")], locked, optional=bench) == []
    assert locks.compare_installed([("torch", "2.13.0+cpu"), ("uvicorn", "0.53.0")], locked, optional=bench) == [
        "uvicorn==0.53.0: installed, the lock has 0.54.0"
    ]


def test_a_lock_is_closed_when_each_requirement_is_met_inside_it():
    locked = {"torch": "2.13.0+cpu", "sympy": "1.14.0", "mpmath": "1.3.0"}
    requires = {
        "torch": ["sympy>=1.13.3", 'nvidia-cublas==12.8; platform_system == "Windows" and sys_platform == "nt"'],
        "sympy": ["mpmath<1.4,>=1.1.0", 'pytest>=7; extra == "dev"'],
    }
    assert locks.unmet(locked, requires, "r.lock") == []
    assert locks.unmet({**locked, "mpmath": "1.4.0"}, requires, "r.lock") == [
        "r.lock: sympy requires mpmath<1.4,>=1.1.0; locked mpmath==1.4.0"
    ]
    assert locks.unmet({"torch": "2.13.0+cpu"}, requires, "r.lock") == [
        "r.lock: torch requires sympy>=1.13.3; sympy is not locked"
    ]


def test_the_repositorys_locks_parse_and_hold_their_inputs_pins():
    for lock in locks.LOCKS:
        locked = {n: e.version for n, e in locks.parse_lock((ROOT / lock.path).read_text(), lock.path).items()}
        assert locks.compare_pins(locks.read_inputs(ROOT / lock.source), locked, lock.source) == []
