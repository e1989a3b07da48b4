"""Strategies for KV-cache scales: shapes, dtypes, values, tensors and per-layer scale sets."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from loadspec.reference.vocabulary import SCALE_KINDS, SENTINEL
from loadspec.strategies._validation import check_choices, check_flag, check_strategy

__all__ = ["scale_shapes", "scale_dtypes", "scale_values", "inexact_scale_values", "scale_tensors", "kv_scale_sets"]

SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
FLOAT32_EDGES = (2.0**-149, float(torch.finfo(torch.float32).tiny), 1.0, FLOAT32_MAX)  # subnormal, normal min, max
INVALID_SPECIALS = (math.nan, math.inf, -math.inf, 0.0, -0.0)


def is_valid_scale(value: float) -> bool:
    """Whether a loaded scale is accepted [KVPROC-7]: finite and positive (the sentinel is not a value)."""
    return math.isfinite(value) and value > 0.0


def stored_as(value: float, dtype: torch.dtype) -> float:
    """``value`` after a round trip through a tensor of ``dtype``."""
    return float(torch.tensor(value, dtype=torch.float64).to(dtype))


def keeps_meaning(value: float, dtype: torch.dtype) -> bool:
    """Whether storing ``value`` as ``dtype`` keeps it valid, invalid or the sentinel, as it was in float32."""
    before, after = stored_as(value, torch.float32), stored_as(value, dtype)
    return is_valid_scale(before) == is_valid_scale(after) and (before == SENTINEL) == (after == SENTINEL)


@st.composite
def scale_shapes(draw: st.DrawFn, *, valid: bool = True) -> tuple[int, ...]:
    """Draws shapes of loaded KV-cache scale tensors.

    * ``valid=True``: one-element shapes ``()``, ``(1,)``, ``(1, 1)`` ... [SCALE-3];
      ``valid=False``: shapes whose element count is not 1, e.g. ``(0,)``, ``(2,)``,
      per-head ``(H, 1, 1)`` or ``(1, 2)`` [SCALE-4].

    .. code-block:: pycon

        >>> scale_shapes().example()
        (1, 1)
        >>> scale_shapes(valid=False).example()
        (5,)
    """
    check_flag("valid", valid)
    if valid:
        return draw(st.integers(0, 4).map(lambda rank: (1,) * rank))
    per_head = st.integers(2, 8).map(lambda heads: (heads, 1, 1))
    other = st.lists(st.integers(0, 8), min_size=1, max_size=4).map(tuple).filter(lambda s: math.prod(s) != 1)
    return draw(st.one_of(per_head, other))


@st.composite
def scale_dtypes(draw: st.DrawFn) -> torch.dtype:
    """Draws the float dtypes a checkpoint stores scales in: float32, bfloat16, float16, float64.

    .. code-block:: pycon

        >>> scale_dtypes().example()
        torch.bfloat16
    """
    return draw(st.sampled_from(SCALE_DTYPES))


@st.composite
def scale_values(draw: st.DrawFn, *, allow_sentinel: bool = True, allow_invalid: bool = False) -> float:
    """Draws scale values as Python floats.

    Valid values are finite, positive and exactly representable in float32
    (from the smallest subnormal to the largest float32).

    * ``allow_sentinel``: also the sentinel -1.0 ("not loaded").
    * ``allow_invalid``: also NaN, +-inf, 0.0, -0.0 and negatives other than -1.0 [KVPROC-7].

    .. code-block:: pycon

        >>> scale_values(allow_invalid=True).example()
        -3.1394125073727572e-34
    """
    check_flag("allow_sentinel", allow_sentinel)
    check_flag("allow_invalid", allow_invalid)
    parts = [st.floats(min_value=0.0, exclude_min=True, allow_infinity=False, width=32),
             st.sampled_from(FLOAT32_EDGES)]
    if allow_sentinel:
        parts.append(st.just(SENTINEL))
    if allow_invalid:
        negatives = st.floats(max_value=0.0, exclude_max=True, allow_infinity=False, width=32)
        parts += [st.sampled_from(INVALID_SPECIALS), negatives.filter(lambda v: v != SENTINEL)]
    return draw(st.one_of(parts))


REDUCED_DTYPES = (torch.bfloat16, torch.float16)


@st.composite
def inexact_scale_values(draw: st.DrawFn, *, dtype: torch.dtype = torch.bfloat16) -> float:
    """Draws valid scale values, exact in float32, that ``dtype`` cannot hold exactly [SCALE-2].

    Each lies in ``dtype``'s normal range, so storing it there rounds it (0.3 becomes 0.30078125
    in bfloat16) without overflowing or flushing it to 0: a scale parameter built in the model's
    dtype instead of float32 is then visible in the loaded value.

    * ``dtype``: ``torch.bfloat16`` or ``torch.float16``.

    .. code-block:: pycon

        >>> inexact_scale_values(dtype=torch.float16).example()
        0.30000001192092896
    """
    if dtype not in REDUCED_DTYPES:
        raise InvalidArgument(f"dtype={dtype!r}, but should be one of {REDUCED_DTYPES}")
    info = torch.finfo(dtype)
    values = st.floats(min_value=float(info.tiny), max_value=float(info.max) / 2, width=32)
    return draw(values.filter(lambda value: stored_as(value, dtype) != value))


@st.composite
def scale_tensors(draw: st.DrawFn, *, valid_shape: bool = True,
                  dtypes: st.SearchStrategy[torch.dtype] = scale_dtypes(),
                  values: st.SearchStrategy[float] = scale_values()) -> torch.Tensor:
    """Draws scale tensors filled with one drawn value.

    * ``valid_shape``: draw from ``scale_shapes(valid=valid_shape)``.
    * ``dtypes``/``values``: strategies for the dtype and the fill value. Pairs where
      the dtype would change the value's meaning (e.g. 1e30 becoming inf in float16)
      are not drawn.

    .. code-block:: pycon

        >>> scale_tensors().example()
        tensor([[[1.0014e-05]]], dtype=torch.float16)
    """
    check_flag("valid_shape", valid_shape)
    check_strategy("dtypes", dtypes)
    check_strategy("values", values)
    shape, dtype, value = draw(scale_shapes(valid=valid_shape)), draw(dtypes), draw(values)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidArgument(f"dtypes drew {dtype!r}, but should draw floating torch dtypes")
    assume(keeps_meaning(value, dtype))
    return torch.full(shape, value, dtype=torch.float64).to(dtype)  # overflows to inf instead of raising


@st.composite
def kv_scale_sets(draw: st.DrawFn, *, kinds: Iterable[str] = SCALE_KINDS, required: Iterable[str] = (),
                  values: st.SearchStrategy[float] = scale_values()) -> dict[str, float | None]:
    """Draws the KV-cache scale values of one checkpoint: kind -> value, or ``None`` when absent.

    * ``kinds``: the kinds drawn (subset of ``("q", "k", "v", "prob")``); each is
      independently present or absent, unless it is ``required``.
    * ``required``: kinds always present (a subset of ``kinds``), e.g. ``("k",)``: a
      checkpoint with v but no k is KVPROC-5's case.
    * ``values``: strategy for a present kind's value.

    .. code-block:: pycon

        >>> kv_scale_sets(kinds=("k", "v")).example()
        {'k': 1.5, 'v': None}
        >>> kv_scale_sets(kinds=("k", "v"), required=("k",)).example()
        {'k': 0.25, 'v': 3.0}
    """
    kinds = check_choices("kinds", kinds, SCALE_KINDS)
    required = check_choices("required", required, kinds, allow_empty=True)
    check_strategy("values", values)
    return draw(st.fixed_dictionaries({kind: values if kind in required else st.none() | values
                                       for kind in dict.fromkeys(kinds)}))
