"""The package's import structure (docs/ARCHITECTURE.md): imports flow one way.

Read from the source with ``ast`` (imports inside functions count too): no import cycle
between modules, no private name (``_x``) imported from another module, and no module
importing one of a later stage of the data flow (lock → sync → ComfyUI → workflow → job →
worker → platforms → CLI).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: tuple[tuple[str, ...], ...] = (
    # leaves: values and helpers that import nothing of the package's stages
    ("comfy_worker.errors", "comfy_worker.jsontypes", "comfy_worker.atomic_write",
     "comfy_worker.job.events"),
    ("comfy_worker.config",),
    ("comfy_worker.net",),
    ("comfy_worker.lockfile",),
    ("comfy_worker.sync", "comfy_worker.readahead", "comfy_worker.resolve"),
    ("comfy_worker.comfy",),
    ("comfy_worker.workflow",),
    ("comfy_worker.job",),
    ("comfy_worker.readiness", "comfy_worker.startup", "comfy_worker.worker"),
    ("comfy_worker.entrypoints",),
    ("comfy_worker.commands", "comfy_worker.cli", "comfy_worker"),
)
"""Stages of the data flow, first to last; a module may import its own stage or earlier
ones. The most specific prefix decides (``job.events`` is a leaf)."""


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in (SRC / "comfy_worker").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def imports(module: str) -> list[tuple[str, str]]:
    """(imported module, name) for every ``comfy_worker`` import of ``module``."""
    out: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("comfy_worker"):
            assert node.module is not None
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.append((sub, "") if sub in MODULES else (node.module, alias.name))
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.startswith("comfy_worker")]
    return out


def layer(module: str) -> int:
    best, found = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    return found


def test_every_module_has_a_stage() -> None:
    assert [m for m in MODULES if layer(m) < 0] == []


def test_no_module_imports_a_later_stage() -> None:
    upward = [f"{m} -> {target}" for m in MODULES for target, _ in imports(m)
              if target in MODULES and layer(target) > layer(m)]
    assert upward == []


def test_no_private_name_is_imported_from_another_module() -> None:
    private = [f"{m}: from {target} import {name}" for m in MODULES
               for target, name in imports(m) if name.startswith("_")
               and not name.startswith("__")]
    assert private == []


def test_there_is_no_import_cycle() -> None:
    graph = {m: {t for t, _ in imports(m) if t in MODULES and t != m} for m in MODULES}
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize("path", ["worker.py"])
def test_the_worker_module_stays_small(path: str) -> None:
    lines = (SRC / "comfy_worker" / path).read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"{path} has {lines} lines"


def test_no_class_is_over_250_lines_outside_the_js_faithful_workflow_port() -> None:
    big = []
    for module, path in MODULES.items():
        if module.startswith("comfy_worker.workflow."):
            continue  # a faithful port of the editor's JavaScript keeps its shape
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > 250:
                    big.append(f"{module}.{node.name}: {lines} lines")
    assert big == []
