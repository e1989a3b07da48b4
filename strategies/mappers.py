"""Strategies for weight names and ``WeightsMapper``s (the MAP laws)."""

from __future__ import annotations

import re

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from loadspec.reference.mapper import WeightsMapper
from loadspec.strategies._validation import check_bounds, check_flag

__all__ = ["weight_names", "mappers"]

COMPONENTS = ("model", "language_model", "layers", "0", "1", "self_attn", "mixer", "mlp", "attn",
              "q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj",
              "weight", "weight_scale", "k_scale", "v_scale", "q_scale", "kv_scale", "output_scale")


@st.composite
def weight_names(draw: st.DrawFn, *, min_parts: int = 1, max_parts: int = 6) -> str:
    """Draws dotted weight names over a small vocabulary, so mapper entries often match.

    * ``min_parts``/``max_parts`` bound the number of dotted components.

    .. code-block:: pycon

        >>> weight_names(max_parts=3).example()
        'layers.self_attn.k_scale'
    """
    check_bounds("parts", min_parts, max_parts, floor=1)
    return ".".join(draw(st.lists(st.sampled_from(COMPONENTS), min_size=min_parts, max_size=max_parts)))


def _keys() -> st.SearchStrategy[str]:
    """Non-empty entry keys: whole components with their dots, or fragments of one."""
    component = st.sampled_from(COMPONENTS)
    return st.one_of(component.map(lambda c: f".{c}."), component.map(lambda c: f"{c}."),
                     component.map(lambda c: f".{c}"), component.map(lambda c: c[: max(1, len(c) // 2)]))


def _values() -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), _keys(), st.just(""))


@st.composite
def mappers(draw: st.DrawFn, *, max_entries: int = 3, allow_drop: bool = True) -> WeightsMapper:
    """Draws reference ``WeightsMapper``s with up to ``max_entries`` entries per stage.

    * ``allow_drop``: whether entries may map to ``None`` (drop the weight).

    .. code-block:: pycon

        >>> mappers(max_entries=1).example()
        WeightsMapper(substr={'.q_proj.': '.qkv_proj.'})
    """
    if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 0:
        raise InvalidArgument(f"max_entries={max_entries!r}, but should be an integer >= 0")
    check_flag("allow_drop", allow_drop)
    values = _values() if allow_drop else _values().filter(lambda v: v is not None)
    entries = st.dictionaries(_keys(), values, max_size=max_entries)
    regex = st.dictionaries(_keys().map(lambda k: re.escape(k) + _anchor(k)), values, max_size=max_entries)
    stacked = st.dictionaries(_keys(), st.tuples(_keys(), st.sampled_from(["q", "k", "v", 0, 1])),
                              max_size=max_entries)
    return draw(st.builds(WeightsMapper, regex=regex, substr=entries, stacked=stacked, prefix=entries,
                          suffix=entries))


def _anchor(key: str) -> str:
    """Anchor regex keys that look like suffixes, as cache-scale mappers do."""
    return "$" if not key.endswith(".") else ""
