"""The layering of the packages, read from their source: the three programs share only
common/'s packages, the contracts need nothing but the standard library, and no module
imports another in a loop (also not for type checking: a loop there is a loop in the
design)."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "tti_contracts": ROOT / "common" / "tti_contracts",
    "tti_kube": ROOT / "common" / "tti_kube",
    "tti_playground": ROOT / "common" / "tti_playground",
    "tti_http": ROOT / "common" / "tti_http",
    "tti_operator": ROOT / "operator" / "tti_operator",
    "tti_server": ROOT / "server" / "tti_server",
    "tti_gateway": ROOT / "gateway" / "tti_gateway",
}
SHARED = {"tti_contracts", "tti_kube", "tti_playground", "tti_http"}
#: What each package may import of ours besides itself.
ALLOWED = {
    "tti_contracts": set(),
    "tti_kube": {"tti_contracts"},
    "tti_playground": set(),
    "tti_http": {"tti_contracts"},
    "tti_operator": SHARED,
    "tti_server": SHARED,
    "tti_gateway": SHARED,
}


def module_name(package: str, path: Path) -> str:
    parts = path.relative_to(PACKAGES[package]).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join((package, *parts))


def modules() -> Iterator[tuple[str, Path]]:
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            if "generated" not in path.parts:
                yield module_name(package, path), path


def imported(name: str, path: Path) -> set[str]:
    """Every module `path` imports (absolute names), wherever the import statement is."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def graph() -> dict[str, set[str]]:
    """Our modules and the modules of ours each one imports."""
    ours = dict(modules())
    return {name: imported(name, path) & ours.keys() - {name} for name, path in ours.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            group.append(node)
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_packages_below_it(package: str) -> None:
    wrong = {
        f"{name} imports {target}"
        for name, targets in graph().items()
        if name.split(".")[0] == package
        for target in targets
        if target.split(".")[0] not in ALLOWED[package] | {package}
    }
    assert not wrong


def test_the_contracts_need_only_the_standard_library() -> None:
    outside = {
        f"{name} imports {target}"
        for name, path in modules()
        if name.startswith("tti_contracts")
        for target in imported(name, path)
        if target.split(".")[0] not in {*sys.stdlib_module_names, "tti_contracts"}
    }
    assert not outside


def test_no_module_imports_another_in_a_loop() -> None:
    assert cycles(graph()) == []


def test_the_checks_see_a_loop_and_a_wrong_direction() -> None:
    """The helpers above find what they are for (a checker that finds nothing proves little)."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    path = PACKAGES["tti_server"] / "api" / "deps.py"
    assert module_name("tti_server", path) == "tti_server.api.deps"
    assert "tti_server.service" in graph()["tti_server.api.deps"]
