"""How loadspec's modules import each other, read with ``ast`` (nothing is imported).

* Suite tests (``conformance/test_*.py``) and the helpers they drive adapters with reach the
  reference only through the ``ref`` fixture, the oracle: from ``loadspec.reference`` they import
  the contract's vocabulary and data, nothing else, and no adapter module.
* No import cycle among the modules of ``reference/``, ``strategies/`` and ``conformance/``
  (top-level and function-level imports alike).
* No function-local import of a loadspec module there: such imports exist to dodge a cycle or
  hide a dependency, and the module's top shows what it needs.
* No test in ``tests/`` shares a name with a suite test: tests/ checks what the suite cannot
  (reference internals, the oracle's own values), so a shared name is a restated suite test.

Every offending import is named ``file:line``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {"reference": "loadspec.reference", "strategies": "loadspec.strategies",
                "conformance": "loadspec.conformance"}
"""Folder -> the package it installs as (pyproject.toml, ``[tool.setuptools] package-dir``)."""

SUITE_MAY_IMPORT = ("loadspec.reference.vocabulary", "loadspec.reference.spec")
"""What suite tests may import from ``loadspec.reference``: the contract's vocabulary and its data (``ModelSpec``).

Not even the package's error classes: the contract's rejections are ``ValueError`` s, and an
engine raises its own. Everything else the reference does, a test asks of the ``ref`` fixture.
"""

SUITE_HELPERS = ("conformance/assertions.py", "conformance/drivers.py", "conformance/reproducers.py")
"""Modules whose functions suite tests call with an adapter: held to the suite tests' rule."""

LOCAL_IMPORT_EXEMPT = ("conformance/adapters/vllm_engine/",)
"""The vLLM adapter imports vLLM, which may only be imported once its runtime module set vLLM's
environment; when its modules are imported is that adapter's business."""

LOCAL_IMPORT_ALLOWED: dict[tuple[str, str], str] = {}
"""(file, loadspec module) -> why that function-local import is needed. None is, today: a module that
needs an optional dependency (gguf, transformers) imports that dependency lazily, not a loadspec module."""


@dataclass(frozen=True)
class Import:
    """One imported loadspec module: where the import statement is, and whether it runs inside a function."""

    path: str
    line: int
    module: str
    local: bool

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.module}"


def module_names(root: Path = ROOT) -> dict[str, str]:
    """Every module under the three folders: loadspec name -> path relative to ``root``."""
    modules = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path.relative_to(root).as_posix()
    return modules


def imports_in(source: str, path: str, module: str, modules: dict[str, str]) -> list[Import]:
    """The loadspec modules ``source`` (module ``module``, file ``path``) imports, top-level and in functions.

    ``from package import name`` imports ``package.name`` when that is a module, else ``package``.
    A name below a known module (``import a.b.c`` where only ``a.b`` is a module) resolves to that module.
    """
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found: list[Import] = []

    def resolve(name: str) -> str:
        known = name
        while known and known not in modules:
            known = known.rpartition(".")[0]
        return known or name

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package
                    for _ in range(child.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in child.names]
            else:
                visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
                continue
            for target in dict.fromkeys(targets):
                if target == "loadspec" or target.startswith("loadspec."):
                    found.append(Import(path, child.lineno, resolve(target), local))

    visit(ast.parse(source, filename=path), False)
    return found


def all_imports(root: Path = ROOT) -> list[Import]:
    modules = module_names(root)
    return [found for module, path in modules.items()
            for found in imports_in((root / path).read_text(), path, module, modules)]


def suite_offences(imports: list[Import]) -> list[Import]:
    """Imports by suite tests and their helpers of reference internals or of an adapter module."""
    def in_suite(path: str) -> bool:
        return path in SUITE_HELPERS or (path.startswith("conformance/test_") and path.count("/") == 1)

    def internal(module: str) -> bool:
        if module == "loadspec" or module == "loadspec.reference" or module.startswith("loadspec.reference."):
            return module not in SUITE_MAY_IMPORT
        return module == "loadspec.conformance.adapters" or module.startswith("loadspec.conformance.adapters.")

    return [found for found in imports if in_suite(found.path) and internal(found.module)]


def cycles(imports: list[Import], modules: dict[str, str]) -> list[list[Import]]:
    """One cycle per strongly connected group of modules, as the imports that close it."""
    edges: dict[str, dict[str, Import]] = {}
    by_path = {path: module for module, path in modules.items()}
    for found in imports:
        source = by_path[found.path]
        if found.module in modules and found.module != source:
            edges.setdefault(source, {}).setdefault(found.module, found)

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan; the graph is a few dozen modules deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, {}):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(modules):
        if node not in index:
            connect(node)

    found_cycles = []
    for group in groups:
        members, start = set(group), min(group)
        path, seen, node = [], {start}, start
        while True:  # walk inside the group until a module repeats: that walk's tail is a cycle
            target = next(t for t in sorted(edges[node]) if t in members)
            path.append(edges[node][target])
            if target in seen:
                first = next(i for i, step in enumerate(path) if by_path[step.path] == target)
                found_cycles.append(path[first:])
                break
            seen.add(target)
            node = target
    return found_cycles


def local_offences(imports: list[Import]) -> list[Import]:
    """Function-local imports of loadspec modules outside the exempt folders and the allow-list."""
    return [found for found in imports if found.local and not found.path.startswith(LOCAL_IMPORT_EXEMPT)
            and (found.path, found.module) not in LOCAL_IMPORT_ALLOWED]


# ------------------------------------------------------------------ the checks
@pytest.fixture(scope="module")
def imports() -> list[Import]:
    found = all_imports()
    assert len({f.path for f in found if f.path.startswith("conformance/test_")}) >= 8, "suite tests not found"
    return found


def test_suite_tests_reach_the_reference_only_through_the_ref_fixture(imports):
    offences = suite_offences(imports)
    assert not offences, (
        "suite tests must ask the `ref` fixture (conformance/adapters/reference.py behind the adapter protocol) "
        f"instead; from loadspec.reference only {', '.join(SUITE_MAY_IMPORT)} may be imported:\n"
        + "\n".join(map(str, offences)))


def test_no_import_cycles(imports):
    found = cycles(imports, module_names())
    assert not found, "import cycles:\n" + "\n".join(
        " -> ".join(str(step) for step in cycle) for cycle in found)


def test_no_function_local_loadspec_imports(imports):
    local = local_offences(imports)
    assert not local, "function-local imports of loadspec modules (import them at the module's top):\n" + "\n".join(
        map(str, local))


def defined_tests(folder: Path) -> dict[str, str]:
    """``test_*`` function name -> ``file:line`` of its first definition, in every ``test_*.py`` under ``folder``."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                found.setdefault(node.name, f"{path.relative_to(ROOT).as_posix()}:{node.lineno}")
    return found


def test_no_reference_test_shares_a_name_with_a_suite_test():
    ours, suite = defined_tests(ROOT / "tests"), defined_tests(ROOT / "conformance")
    shared = sorted(set(ours) & set(suite))
    assert not shared, ("tests/ restates suite tests (delete the copy, or rename it to say what it checks that the "
                        "suite cannot):\n" + "\n".join(f"{ours[n]} and {suite[n]}: {n}" for n in shared))


def test_package_dirs_are_pyprojects():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert {package: folder for folder, package in PACKAGE_DIRS.items()} == config["tool"]["setuptools"]["package-dir"]


# ------------------------------------------------------------------ the checker itself
FAKE_MODULES = {name: name.replace(".", "/") + ".py" for name in (
    "loadspec.reference", "loadspec.reference.api", "loadspec.reference.spec", "loadspec.reference.vocabulary",
    "loadspec.conformance", "loadspec.conformance.a", "loadspec.conformance.b",
    "loadspec.conformance.adapters.reference")}


def fake_imports(path: str, module: str, source: str) -> list[Import]:
    return imports_in(source, path, module, FAKE_MODULES)


def test_checker_resolves_every_import_form():
    source = "\n".join([
        "import torch",
        "import loadspec.reference.api as api",
        "from loadspec.reference import spec, build",
        "from loadspec.reference.vocabulary import SCALE_KINDS",
        "from loadspec import reference",
        "from . import b",
        "from .adapters.reference import ReferenceAdapter",
        "class Holder:",
        "    from loadspec.conformance import a",
        "def f():",
        "    def g():",
        "        from loadspec.reference.api import build",
        "    return g",
    ])
    found = [(i.line, i.module, i.local) for i in fake_imports("conformance/test_x.py", "loadspec.conformance.test_x",
                                                               source)]
    assert found == [(2, "loadspec.reference.api", False), (3, "loadspec.reference.spec", False),
                     (3, "loadspec.reference", False), (4, "loadspec.reference.vocabulary", False),
                     (5, "loadspec.reference", False), (6, "loadspec.conformance.b", False),
                     (7, "loadspec.conformance.adapters.reference", False), (9, "loadspec.conformance.a", False),
                     (12, "loadspec.reference.api", True)]
    offences = suite_offences(fake_imports("conformance/test_x.py", "loadspec.conformance.test_x", source))
    assert [i.line for i in offences] == [2, 3, 5, 7, 12]
    assert suite_offences(fake_imports("conformance/plugin.py", "loadspec.conformance.plugin", source)) == []


def test_checker_finds_a_cycle_through_a_function_local_import():
    a = fake_imports("loadspec/conformance/a.py", "loadspec.conformance.a", "from loadspec.conformance import b")
    b = fake_imports("loadspec/conformance/b.py", "loadspec.conformance.b",
                     "def late():\n    from loadspec.conformance.a import x")
    [cycle] = cycles(a + b, FAKE_MODULES)
    assert [str(step) for step in cycle] == ["loadspec/conformance/a.py:1 imports loadspec.conformance.b",
                                             "loadspec/conformance/b.py:2 imports loadspec.conformance.a"]
    assert cycles(a, FAKE_MODULES) == []
