"""Argument checks for the public strategies: bad arguments raise ``InvalidArgument``.

The public strategies are ``st.composite`` functions that run these checks when a value
is drawn, as Hypothesis's own strategies do: calling one never raises, and its ``repr``
is the call (``checkpoint_layouts(spec, producers=('modelopt',))``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument


def check_bounds(name: str, min_value: int, max_value: int | None, *, floor: int = 0) -> None:
    """``floor <= min_value <= max_value`` for integer bounds called ``min_<name>``/``max_<name>``."""
    if not isinstance(min_value, int) or isinstance(min_value, bool):
        raise InvalidArgument(f"min_{name}={min_value!r}, but should be an integer")
    if min_value < floor:
        raise InvalidArgument(f"min_{name}={min_value}, but should be at least {floor}")
    if max_value is not None:
        if not isinstance(max_value, int) or isinstance(max_value, bool):
            raise InvalidArgument(f"max_{name}={max_value!r}, but should be an integer or None")
        if max_value < min_value:
            raise InvalidArgument(f"max_{name}={max_value}, but should be at least min_{name}={min_value}")


def check_choices(name: str, values: object, allowed: Iterable[Any], *, allow_empty: bool = False) -> tuple[Any, ...]:
    """``values`` is a collection (not a string) of elements of ``allowed``; returns them as a tuple."""
    choices = tuple(allowed)
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidArgument(f"{name}={values!r}, but should be a tuple of choices from {choices}")
    chosen = tuple(values)
    if not chosen and not allow_empty:
        raise InvalidArgument(f"{name}=(), but should name at least one of {choices}")
    bad = [v for v in chosen if v not in choices]
    if bad:
        raise InvalidArgument(f"{name} contains {bad!r}, but every entry should be one of {choices}")
    return chosen


def check_flag(name: str, value: object) -> None:
    """``value`` is a bool."""
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name}={value!r}, but should be True or False")


def check_strategy(name: str, value: object) -> None:
    """``value`` is a Hypothesis strategy."""
    if not isinstance(value, st.SearchStrategy):
        raise InvalidArgument(f"{name}={value!r}, but should be a strategy")
