"""The package's layers, read from its source with ``ast``: no import cycles, a core that
imports nothing above it, and no module reading another package's private attributes.

Every import counts, wherever it is written: at module level, inside a function, under
``TYPE_CHECKING``. A cycle hidden in a function is still two modules that cannot be read,
or loaded, one without the other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "celery_redlock"

#: What the core may import of this package: itself, and the error tree it raises.
CORE_MAY_IMPORT = ("celery_redlock._core", "celery_redlock.exceptions")

#: Third-party packages of the Celery layer, which the core never imports.
CELERY_PACKAGES = ("celery", "kombu", "billiard", "click")

#: Underscore names that are public API: namedtuple's, and Django's ``Model._meta`` (its
#: documented "Model _meta API", which the fencing check reads a model's keys from).
PUBLIC_UNDERSCORE = frozenset(
    {"_replace", "_fields", "_asdict", "_make", "_field_defaults", "_meta"}
)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


@cache
def tree(module: str) -> ast.Module:
    return ast.parse(modules()[module].read_text(), filename=str(modules()[module]))


def package_of(module: str) -> str:
    return module if modules()[module].name == "__init__.py" else module.rpartition(".")[0]


def imported(module: str) -> Iterator[tuple[str, ast.Import | ast.ImportFrom]]:
    """Every module name ``module`` imports (absolute), with its import statement."""
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package ``level - 1`` above this one
                parts = package_of(module).split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            yield base, node
            for alias in node.names:
                yield f"{base}.{alias.name}", node  # ``from package import submodule``


def edges(module: str) -> set[str]:
    """The package's modules that ``module`` imports (the package root's ``__init__`` is
    left out: every submodule import runs it, which is not a dependency between them)."""
    known = modules()
    return {name for name, _ in imported(module) if name in known and name != "celery_redlock"}


def cycles(edges_of: Callable[[str], set[str]] = edges) -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges_of(node)):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(modules()):
        if module not in index:
            visit(module)
    return found


def test_no_module_is_in_an_import_cycle() -> None:
    assert cycles() == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The finder itself, on the package with one edge added: the core's quorum module
    importing the Celery layer's run module, which imports the core back."""
    added = {"celery_redlock._core.quorum": {"celery_redlock._celery.run"}}
    found = cycles(lambda m: edges(m) | added.get(m, set()))
    assert any("celery_redlock._core.quorum" in c for c in found)


def test_the_core_imports_nothing_above_it() -> None:
    core = [m for m in modules() if m.startswith("celery_redlock._core")]
    assert core
    wrong = {
        (module, name)
        for module in core
        for name in edges(module)
        if not name.startswith(CORE_MAY_IMPORT)
    }
    celery = {
        (module, name)
        for module in core
        for name, _ in imported(module)
        if name.split(".")[0] in CELERY_PACKAGES
    }
    assert wrong == set()
    assert celery == set()


def defined_private_names() -> dict[str, set[str]]:
    """Each underscore name and the modules that define it (a def, a class, an
    assignment to a name or an attribute, or a string naming it where it is made:
    ``__slots__``, ``setattr``, a class body given to ``type()`` as a dict)."""
    owners: dict[str, set[str]] = {}
    for module in modules():
        for node in ast.walk(tree(module)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names = [node.id]
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names = [node.attr]
            else:
                names = _named_by_strings(node)
            for name in names:
                if _private(name):
                    owners.setdefault(name, set()).add(module)
    return owners


def _named_by_strings(node: ast.AST) -> list[str]:
    strings: Sequence[ast.expr | None]
    if isinstance(node, ast.Dict):
        strings = node.keys
    elif isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
    ):
        strings = list(node.value.elts) if isinstance(node.value, (ast.Tuple, ast.List)) else []
    elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("setattr"):
        strings = node.args[1:2]
    else:
        return []
    return [s.value for s in strings if isinstance(s, ast.Constant) and isinstance(s.value, str)]


def _private(name: str) -> bool:
    """An underscore name that is not a dunder, not one of :data:`PUBLIC_UNDERSCORE`, and
    not a sunder (``_name_``, ``_value_``: Enum's documented attributes)."""
    sunder = len(name) > 2 and name.endswith("_") and not name.endswith("__")
    return (
        name.startswith("_")
        and not name.startswith("__")
        and not sunder
        and (name not in PUBLIC_UNDERSCORE)
    )


def private_reads() -> set[tuple[str, str]]:
    """Reads of an underscore attribute (``x._a``, ``getattr(x, "_a")``) that no module of
    the reader's own package defines, and imports of underscore names from outside it (of
    a dependency, of its underscore modules too). Reads through ``self``, ``cls`` and
    ``super()`` are a class's own."""
    owners = defined_private_names()
    reads = set()
    for module in modules():
        own = package_of(module)
        for node in ast.walk(tree(module)):
            attr = _read_attribute(node)
            if attr is not None and _private(attr):
                if not any(package_of(m) == own for m in owners.get(attr, ())):
                    reads.add((module, ast.unparse(node)))
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                source = node.module
                if source.startswith("celery_redlock") and package_of(source) == own:
                    continue
                # The package's own ``_core`` and ``_celery`` are its internals, not a
                # dependency's: only their underscore names are private to them.
                ours = source.startswith("celery_redlock")
                names = [*([] if ours else source.split(".")), *(a.name for a in node.names)]
                if any(_private(n) for n in names):
                    reads.add((module, ast.unparse(node)))
    return reads


def _read_attribute(node: ast.AST) -> str | None:
    """The attribute name ``node`` reads from another object, if it reads one."""
    if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
        target = node.value
        if isinstance(target, ast.Name) and target.id in ("self", "cls"):
            return None
        if isinstance(target, ast.Call) and ast.unparse(target.func) == "super":
            return None
        return node.attr
    if (
        isinstance(node, ast.Call)
        and ast.unparse(node.func) == "getattr"
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    ):
        return node.args[1].value
    return None


def test_no_module_reads_another_packages_private_attributes() -> None:
    assert private_reads() == set()


@pytest.mark.parametrize("module", sorted(modules()))
def test_every_module_imports_first(module: str) -> None:
    """Each module also loads as the first one imported, in an interpreter of its own: a
    cycle the graph missed would fail here with a partially initialised module."""
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, timeout=60)
