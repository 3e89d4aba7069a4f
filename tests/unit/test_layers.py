"""The project's packages import one another without a cycle (clients/ and server/ once did,
through paths and keys): what they share is in common/, which imports none of them. Every
import statement counts, those inside functions too."""

from __future__ import annotations

from common.paths import ROOT
from helpers import imported_modules

PACKAGES = ("common", "training", "clients", "server", "gateway", "container", "deploy", "testbed", "bench")


def imported_packages(package: str) -> dict[str, set[str]]:
    """{other package: the files of `package` that import it}."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for top in imported_modules(path):
            if top in PACKAGES and top != package:
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [node])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_the_packages():
    imports = {package: imported_packages(package) for package in PACKAGES}
    cycle = find_cycle({package: set(found) for package, found in imports.items()})
    assert cycle is None, (
        "import cycle "
        + " -> ".join(cycle)
        + ": "
        + "; ".join(f"{a} -> {b} in {', '.join(sorted(imports[a][b]))}" for a, b in zip(cycle, cycle[1:], strict=False))
    )


def test_common_imports_none_of_the_others():
    assert imported_packages("common") == {}


def test_the_handlers_import_none_of_the_packages():
    """handlers/ is packed flat into the archive, without the packages beside it: a
    worker that imported one would fail where TorchServe unpacks it."""
    assert imported_packages("handlers") == {}
