"""The lock files: every Python package the venv and the image install, transitive
dependencies included, by exact version with the sha256 of its files. Run with the venv's
python (pip-tools and packaging are in requirements-dev.txt).

  python .ci/locks.py write       make lock: requirements*.lock from requirements*.txt
  python .ci/locks.py current     make lock-check (CI): regenerated in build/locks, the same?
  python .ci/locks.py check       make lint, offline: every input pin locked at its version,
                                  every entry hashed, each lock's set closed
  python .ci/locks.py installed   make test, make test-unit: .venv holds the locks' set exactly

requirements.lock is what the image installs; .venv installs requirements-dev.lock (resolved
under requirements.lock, so the two agree) and requirements-nodeps.lock, both with
pip install --require-hashes --no-deps. requirements-nodeps.txt's packages are installed
without their (broken) dependencies, so their lock is written from pip download, not
resolved.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Lock:
    source: str  # the input, e.g. requirements.txt
    path: str  # its lock
    constraint: str | None = None  # another lock this one is resolved under
    nodeps: bool = False  # installed without dependencies: pinned files, no resolution


LOCKS = (
    Lock("requirements.txt", "requirements.lock"),
    Lock("requirements-dev.txt", "requirements-dev.lock", constraint="requirements.lock"),
    Lock("requirements-nodeps.txt", "requirements-nodeps.lock", nodeps=True),
    Lock("bench/requirements.txt", "bench/requirements.lock", constraint="requirements-dev.lock"),
)
# what `make venv` installs into .venv (the image installs requirements.lock alone), and what
# `make bench` may add to it
VENV_LOCKS = ("requirements-dev.lock", "requirements-nodeps.lock")
OPTIONAL_LOCKS = ("bench/requirements.lock",)
COMMAND = "make lock"
PREAMBLE = """\
# The lock of {source}: {what},
# each at one version with the sha256 of its files. Do not edit: change {source}
# and run `make lock` (.ci/locks.py, pip-tools); CI's `make lock-check` fails while it is stale.
# Installed with pip install --require-hashes --no-deps -r {path}.
# For Linux x86_64 and CPython 3.11, what the image and CI run{torch}.
"""
TORCH = (
    ": torch's one hash is that\n# of the torch-2.13.0+cpu cp311 manylinux_2_28_x86_64 wheel"
    " (PyTorch's CPU index elsewhere)"
)


def preamble(lock: Lock) -> str:
    what = "its packages alone" if lock.nodeps else "every package, transitive dependencies included"
    return PREAMBLE.format(source=lock.source, path=lock.path, what=what, torch="" if lock.nodeps else TORCH)


class LockError(ValueError):
    pass


# ---- parsing


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """Lines with their backslash continuations joined and comments dropped, numbered by
    the line they start on."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            if pending:  # a comment inside a continued entry ends it, as pip reads it
                yield start, " ".join(pending)
                pending = []
            continue
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        joined = " ".join(p for p in pending if p)
        pending = []
        if joined:
            yield start, joined
    if pending and any(pending):
        yield start, " ".join(p for p in pending if p)


@dataclass(frozen=True)
class Entry:
    name: str  # canonical (PEP 503)
    version: str
    hashes: tuple[str, ...]


def parse_lock(text: str, where: str = "lock") -> dict[str, Entry]:
    """A hashed lock: `name==version --hash=sha256:...` entries, nothing else (no ranges,
    no URLs, no editables, no options, each name once)."""
    entries: dict[str, Entry] = {}
    for number, line in _logical_lines(text):
        words = line.split()
        spec = words[0]
        hashes = tuple(w.removeprefix("--hash=") for w in words[1:] if w.startswith("--hash="))
        others = [w for w in words[1:] if not w.startswith("--hash=")]
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;=<>!~]+)", spec)
        if spec.startswith("-") or not m or others:
            raise LockError(f"{where}:{number}: not a pinned, hashed entry: {line}")
        if not hashes:
            raise LockError(f"{where}:{number}: {spec} has no hash")
        if not all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes):
            raise LockError(f"{where}:{number}: {spec}: a hash that is not sha256")
        name = canonicalize_name(m.group(1))
        if name in entries:
            raise LockError(f"{where}:{number}: {name} locked twice")
        entries[name] = Entry(name, m.group(2), hashes)
    return entries


def read_inputs(path: Path, _seen: frozenset[Path] = frozenset()) -> dict[str, str | None]:
    """An input requirements file's direct requirements, `-r` includes followed: canonical
    name -> the version it pins with ==, or None when it does not pin one."""
    path = path.resolve()
    if path in _seen:
        raise LockError(f"{path}: included in a loop")
    found: dict[str, str | None] = {}
    for number, line in _logical_lines(path.read_text()):
        include = re.fullmatch(r"(?:-r|--requirement)[\s=]+(\S+)", line)
        if include:
            found.update(read_inputs(path.parent / include.group(1), _seen | {path}))
            continue
        if line.startswith("-"):
            continue  # other options (-c, index settings) pin nothing
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise LockError(f"{path.name}:{number}: {e}") from None
        pins = [s.version for s in req.specifier if s.operator in ("==", "===")]
        found[canonicalize_name(req.name)] = pins[0] if pins else None
    return found


def same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


# ---- the checks: each returns its problems, one line each


def compare_installed(
    installed: Iterable[tuple[str, str]],
    locked: Mapping[str, str],
    ignore: Iterable[str] = (),
    optional: Mapping[str, str] | None = None,
) -> list[str]:
    """What an environment holds (name, version pairs, as importlib.metadata lists them)
    against a locked set: a package the lock does not list, at another version, installed
    twice, or locked and missing. `optional` may be installed, at its locked version."""
    allowed = {**(optional or {}), **locked}
    skip = {canonicalize_name(n) for n in ignore}
    versions: dict[str, set[str]] = {}
    for name, version in installed:
        key = canonicalize_name(name)
        if key not in skip:
            versions.setdefault(key, set()).add(version)
    problems = []
    for name in sorted(versions):
        have = sorted(versions[name])
        if len(have) > 1:
            problems.append(f"{name}: installed more than once ({', '.join(have)})")
        elif name not in allowed:
            problems.append(f"{name}=={have[0]}: installed, not in the lock")
        elif not same_version(have[0], allowed[name]):
            problems.append(f"{name}=={have[0]}: installed, the lock has {allowed[name]}")
    problems += [
        f"{name}=={locked[name]}: locked, not installed"
        for name in sorted(locked)
        if name not in versions and name not in skip
    ]
    return problems


def compare_pins(pins: Mapping[str, str | None], locked: Mapping[str, str], source: str) -> list[str]:
    """Every input requirement of `source` in its lock, at the version it pins."""
    problems = []
    for name, version in sorted(pins.items()):
        if name not in locked:
            problems.append(f"{source}: {name} is not in its lock")
        elif version is not None and not same_version(version, locked[name]):
            problems.append(f"{source}: {name}=={version}, its lock has {locked[name]}")
    return problems


def unmet(locked: Mapping[str, str], requires: Mapping[str, Iterable[str]], where: str) -> list[str]:
    """Whether a locked set is closed: each package's requirements (Requires-Dist strings,
    by package) met by the set itself, markers evaluated for this interpreter."""
    problems = []
    env = {k: str(v) for k, v in default_environment().items()}
    for name in sorted(locked):
        for text in requires.get(name, ()):
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            if dep not in locked:
                problems.append(f"{where}: {name} requires {text}; {dep} is not locked")
            elif not req.specifier.contains(locked[dep], prereleases=True):
                problems.append(f"{where}: {name} requires {text}; locked {dep}=={locked[dep]}")
    return problems


# ---- commands


def _versions(path: Path) -> dict[str, str]:
    return {name: e.version for name, e in parse_lock(path.read_text(), path.name).items()}


def _project_name() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["name"])


def _installed() -> list[tuple[str, str]]:
    return [(d.metadata["Name"] or "?", d.version) for d in importlib.metadata.distributions()]


def installed() -> list[str]:
    locked: dict[str, str] = {}
    for path in VENV_LOCKS:
        locked.update(_versions(ROOT / path))
    optional: dict[str, str] = {}
    for path in OPTIONAL_LOCKS:
        optional.update(_versions(ROOT / path))
    problems = compare_installed(_installed(), locked, ignore=[_project_name()], optional=optional)
    if problems:
        problems.append(f"{sys.prefix} is not what {' + '.join(VENV_LOCKS)} lock: rebuild it (rm -r .venv; make venv)")
    return problems


def check() -> list[str]:
    problems: list[str] = []
    locks: dict[str, dict[str, str]] = {}
    for lock in LOCKS:
        try:
            locks[lock.path] = _versions(ROOT / lock.path)
        except (LockError, OSError) as e:
            problems.append(str(e))
            continue
        pins = read_inputs(ROOT / lock.source)
        problems += compare_pins(pins, locks[lock.path], lock.source)
        if lock.nodeps:
            problems += [f"{lock.path}: {n} is not in {lock.source}" for n in sorted(set(locks[lock.path]) - set(pins))]
        if lock.constraint and lock.constraint in locks:
            problems += [
                f"{lock.path}: {n}=={v}, {lock.constraint} has {locks[lock.constraint][n]}"
                for n, v in sorted(locks[lock.path].items())
                if n in locks[lock.constraint] and not same_version(v, locks[lock.constraint][n])
            ]
    # closed: from the metadata of this venv's packages, which are the dev lock's (the
    # serving lock's too, as the dev lock is resolved under it); nodeps ones are exempt
    requires = {
        canonicalize_name(d.metadata["Name"] or "?"): (d.version, d.requires or [])
        for d in importlib.metadata.distributions()
    }
    for lock in LOCKS:
        if not lock.nodeps and lock.path in locks:
            locked = locks[lock.path]
            known: dict[str, list[str]] = {
                n: r for n, (v, r) in requires.items() if n in locked and same_version(v, locked[n])
            }
            problems += unmet(locked, known, lock.path)
    return problems


def _pip_compile(lock: Lock, where: Path) -> None:
    args = [sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--allow-unsafe"]
    args += ["--strip-extras", "--no-emit-index-url", "--no-emit-find-links", "--no-emit-trusted-host"]
    args += ["--newline", "lf"]
    if lock.constraint:
        args += ["--constraint", lock.constraint]
    args += ["--output-file", lock.path, lock.source]
    subprocess.run(args, cwd=where, check=True, env={**os.environ, "CUSTOM_COMPILE_COMMAND": COMMAND})


def _pip_download(lock: Lock, where: Path) -> None:
    """Each pinned package's file as pip picks it here, without dependencies, and its hash."""
    pins = read_inputs(where / lock.source)
    out = []
    for name, version in sorted(pins.items()):
        if version is None:
            raise LockError(f"{lock.source}: {name} is not pinned with ==")
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, f"{name}=={version}"],
                check=True,
            )
            (file,) = Path(tmp).iterdir()
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
        out.append(f"{name}=={version} \\\n    --hash=sha256:{digest}\n    # via -r {lock.source}\n")
    header = f"#\n# This file is autogenerated by {COMMAND} (pip download --no-deps, then sha256)\n#\n"
    (where / lock.path).write_text(header + "".join(out))


def write(where: Path) -> None:
    for lock in LOCKS:  # in order: the dev lock is resolved under the serving one
        print(f"locks.py: {lock.source} -> {lock.path}", flush=True)
        path = where / lock.path
        if path.exists():  # pip-tools keeps the pins of the lock it rewrites
            path.write_text(_body(path.read_text(), lock))
        (_pip_download if lock.nodeps else _pip_compile)(lock, where)
        path.write_text(preamble(lock) + path.read_text())


def _body(text: str, lock: Lock) -> str:
    return text.removeprefix(preamble(lock))


def current() -> list[str]:
    where = ROOT / "build" / "locks"
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    for name in {*(lock.source for lock in LOCKS), *(lock.path for lock in LOCKS)}:
        if (ROOT / name).exists():
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, where / name)
    write(where)
    problems = []
    for lock in LOCKS:
        old = (ROOT / lock.path).read_text().splitlines(keepends=True) if (ROOT / lock.path).exists() else []
        new = (where / lock.path).read_text().splitlines(keepends=True)
        diff = "".join(difflib.unified_diff(old, new, lock.path, f"build/locks/{lock.path}"))
        if diff:
            problems.append(f"{lock.path} is not current (make lock rewrites it):\n{diff}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["write", "current", "check", "installed"])
    command = parser.parse_args(argv).command
    if command == "write":
        write(ROOT)
        return 0
    problems = {"current": current, "check": check, "installed": installed}[command]()
    for line in problems:
        print(f"locks.py {command}: {line}", file=sys.stderr)
    if not problems:
        print(f"locks.py {command}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
