"""Transitional shim: ``tests/test_strategies.py`` still imports ``assert_same_kernel_state`` from here.

Everything else in tests/ compares states with ``loadspec.conformance.assertions`` (and the
``model_state`` fixture of ``tests/conftest.py``). Once test_strategies.py calls
``assert_same_state`` itself, delete this file.
"""

from __future__ import annotations

from loadspec.conformance.assertions import assert_same_state


def assert_same_kernel_state(got: dict, expected: dict) -> None:
    """Two exported kernel states are bit-identical (``assertions.assert_same_state``)."""
    __tracebackhide__ = True
    assert_same_state("kernel state", got, expected, "RELOAD-2")
