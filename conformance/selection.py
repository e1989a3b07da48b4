"""Choosing the implementation under test: a registered name, a module, or ``module:attribute``.

Registered names come from the entry-point group ``loadspec.adapters`` (an
adapter package registers itself there); ``reference`` and ``vllm`` ship with
loadspec.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from importlib.metadata import entry_points

from loadspec.conformance.adapter import check_adapter

ENTRY_POINT_GROUP = "loadspec.adapters"
ENV_VAR = "LOADSPEC_IMPL"
BUILTIN = {
    "reference": "loadspec.conformance.adapters.reference:ReferenceAdapter",
    "vllm": "loadspec.conformance.adapters.vllm_engine:VllmAdapter",
    "sglang": "loadspec.conformance.adapters.sglang_engine:SglangAdapter",
}


class AdapterSelectionError(Exception):
    """The implementation named by ``--impl``/``LOADSPEC_IMPL`` cannot be used (one-line message)."""


def registered() -> dict[str, str]:
    """Adapter names and their targets: built-in ones plus the entry-point group."""
    names = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names[ep.name] = ep.value
    return names


def chosen_name(option: str | None) -> str:
    """``--impl``, else ``$LOADSPEC_IMPL``, else ``reference``."""
    return option or os.environ.get(ENV_VAR) or "reference"


def _import_target(target: str):
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AdapterSelectionError(f"cannot import {module_name!r} for --impl: {exc}") from None
    if attribute:
        try:
            return getattr(module, attribute)
        except AttributeError:
            raise AdapterSelectionError(f"module {module_name!r} has no attribute {attribute!r}") from None
    for attribute in ("ADAPTER", "Adapter", "adapter"):
        if hasattr(module, attribute):
            return getattr(module, attribute)
    raise AdapterSelectionError(f"module {module_name!r} defines no ADAPTER, Adapter or adapter; "
                                f"name one with {module_name}:<attribute>")


def resolve(name_or_target: str):
    """The adapter for a registered name, ``module`` or ``module:attribute``; a class or factory is called."""
    names = registered()
    target = names.get(name_or_target, name_or_target)
    if name_or_target not in names and not ("." in target or ":" in target) \
            and importlib.util.find_spec(target) is None:
        raise AdapterSelectionError(f"unknown implementation {name_or_target!r}; registered: "
                                    f"{', '.join(sorted(names))}; or give a module or module:attribute")
    adapter = _import_target(target)
    if isinstance(adapter, type) or (callable(adapter) and not hasattr(adapter, "capabilities")):
        adapter = adapter()
    problems = check_adapter(adapter)
    if problems:
        raise AdapterSelectionError("; ".join(problems))
    return adapter
