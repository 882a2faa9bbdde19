"""The layers read one way, and the import graph has no circles.

Layers, lowest first: ``unimed`` (``lib/unimed``: torch, MONAI, pydicom, highdicom) <- ``trainers``
(training algorithms) <- ``servers`` (child processes), ``benchmarks`` and the MONAI Label app
(``apps/unimed``, whose own package is ``lib``) <- ``main.py`` (the command line). Imports are
read from the source (every ``import`` statement, also those inside functions), so a lazy import
counts as much as one at the top of a file; an import under ``if TYPE_CHECKING:`` is read by
type checkers only, never run, and is not counted for the layers.

The library (``lib/unimed``) is held to a stricter graph as well: there an import under
``if TYPE_CHECKING:`` counts too (a static reader of imports sees it), and importing a module
of a package counts as importing the package (Python runs its ``__init__`` first), so a
module that a package's ``__init__`` needs cannot reach back to it through a sibling.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "unimed"

#: folder -> the package name its files import as
ROOTS = {
    REPO / "lib" / "unimed": "unimed",
    REPO / "trainers": "trainers",
    REPO / "benchmarks": "benchmarks",
    REPO / "servers": "servers",
    APP / "lib": "lib",
}

#: what each layer must not import (top-level names)
FORBIDDEN = {
    "unimed": {"monailabel", "fastapi", "starlette", "uvicorn", "trainers", "benchmarks", "servers", "lib", "main"},
    "trainers": {"monailabel", "fastapi", "starlette", "uvicorn", "benchmarks", "servers", "lib", "main"},
    "servers": {"trainers", "benchmarks", "lib", "main"},
    "benchmarks": {"lib", "main"},
    "lib": {"benchmarks", "servers", "main"},
    "app": {"benchmarks", "servers", "main"},
}


def _modules() -> dict[str, Path]:
    """Every project module by its dotted name (the app's ``main.py`` as ``app``)."""
    out = {"main": REPO / "main.py", "app": APP / "main.py"}
    for root, package in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _imports(path: Path, name: str, *, type_checking: bool = False) -> set[str]:
    """The dotted names a file imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``); those
    under ``if TYPE_CHECKING:`` only with ``type_checking``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    type_only = set() if type_checking else {
        id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
        for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


MODULES = _modules()
IMPORTS = {name: _imports(path, name) for name, path in MODULES.items()}


def _layer(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_runs_up_the_layers(name):
    forbidden = FORBIDDEN.get(_layer(name), set())
    bad = sorted(m for m in IMPORTS[name] if m.split(".")[0] in forbidden)
    assert not bad, f"{MODULES[name].relative_to(REPO)} imports {', '.join(bad)} (a higher layer or MONAI Label glue)"


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` (module -> the modules it imports) as a path back to its start, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def _strict_graph(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph of modules (the keys) from what each imports, ``TYPE_CHECKING`` imports included,
    adding the packages an imported module sits in (their ``__init__`` runs first) but not the
    importing module's own packages."""
    graph = {}
    for name, imported in imports.items():
        deps = set()
        for dotted in imported:
            parts = dotted.split(".")
            deps.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
        graph[name] = {m for m in deps if m in imports and m != name and not name.startswith(m + ".")}
    return graph


def test_the_import_graph_has_no_circles():
    graph = {name: {m for m in imported if m in MODULES and m != name} for name, imported in IMPORTS.items()}
    # a package's __init__ that re-exports its own modules is not a circle: drop edges into a parent package
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    cycle = _circle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_library_has_no_circles_even_through_type_only_imports():
    """Type-only imports and package ``__init__`` files count: the task specs sit below the codec,
    the composer, the network and the predictor, not beside them."""
    library = {name: _imports(path, name, type_checking=True) for name, path in MODULES.items()
               if _layer(name) == "unimed"}
    cycle = _circle(_strict_graph(library))
    assert cycle is None, "import circle (counting TYPE_CHECKING imports and packages): " + " -> ".join(cycle)


def test_no_type_checking_imports_in_the_task_specs():
    """The task specs import what they name: nothing of theirs hides under ``if TYPE_CHECKING:``."""
    specs = sorted(name for name in MODULES if name.startswith("unimed.tasks"))
    hidden = [name for name in specs if _imports(MODULES[name], name, type_checking=True) != IMPORTS[name]]
    assert specs and not hidden, f"TYPE_CHECKING imports in {', '.join(hidden)}"


def test_nothing_edits_the_import_path():
    """The project is installed (pyproject.toml); no module reaches its siblings through sys.path."""
    offenders = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, "sys.path used in " + ", ".join(offenders)


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The rules above can fail: a library file importing MONAI Label is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from monailabel.interfaces.app import MONAILabelApp\n")
    assert "monailabel.interfaces.app" in _imports(bad, "unimed.bad")
    assert any(m.split(".")[0] in FORBIDDEN["unimed"] for m in _imports(bad, "unimed.bad"))
    typed = tmp_path / "typed.py"
    typed.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from trainers.joint import JointTrainer\n")
    assert "trainers.joint" not in _imports(typed, "unimed.typed")
    assert "trainers.joint" in _imports(typed, "unimed.typed", type_checking=True)


def test_the_strict_checker_sees_a_circle_through_a_package():
    """A low module importing one module of a package runs the package's ``__init__``; if that
    ``__init__`` reaches the low module again, it is a circle, though no module names its importer."""
    assert _circle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _circle({"a": {"b"}, "b": set()}) is None
    imports = {"pkg": {"pkg.spec"}, "pkg.spec": {"low"}, "low": {"pkg.names"}, "pkg.names": set()}
    assert _circle(_strict_graph(imports)) == ["low", "pkg", "pkg.spec", "low"]
    imports["low"] = {"names"}  # the names moved out of the package: no circle
    imports["names"] = set()
    assert _circle(_strict_graph(imports)) is None
