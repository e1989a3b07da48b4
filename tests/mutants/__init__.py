"""Deliberately broken implementations: each wraps the reference adapter with exactly one bug.

Each module ``tests/mutants/<bug>.py`` (not starting with ``_``) holds one adapter class with
``targets`` (the rules it must break) and ``suite`` (the suite modules whose tests kill it).
``tests/test_mutants.py`` discovers them with :func:`discover`, runs each through
``python -m mutants`` on three Hypothesis seeds and checks that every target fails on each;
it also fails when a MUST rule has no mutant.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

SUITE_DIR = Path(__file__).resolve().parent.parent.parent / "conformance"


def discover() -> dict[str, type]:
    """``{"mutants.<module>:<Class>": class}`` for every mutant module, in module-name order."""
    found: dict[str, type] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        classes = list({id(cls): cls for _, cls in inspect.getmembers(module, inspect.isclass)
                        if cls.__module__ == module.__name__ and "targets" in vars(cls)}.values())
        if len(classes) != 1:
            raise TypeError(f"{module.__name__}: expected one mutant class with 'targets', found "
                            f"{[cls.__name__ for cls in classes]}")
        found[f"{module.__name__}:{classes[0].__name__}"] = classes[0]
    return found


def load(target: str) -> type:
    """The mutant class named ``module:Class``, checked to declare ``targets`` and ``suite``."""
    module, _, attribute = target.partition(":")
    cls = getattr(importlib.import_module(module), attribute)
    for field in ("targets", "suite"):
        if not getattr(cls, field, None):
            raise TypeError(f"{target}: a mutant must declare a non-empty {field!r}")
    return cls
