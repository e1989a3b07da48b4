"""Strategies for weight names and ``WeightsMapper``s (the MAP laws)."""

from __future__ import annotations

import re

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from loadspec.reference.mapper import STAGES, WeightsMapper
from loadspec.strategies._validation import check_bounds, check_choices, check_flag

__all__ = ["weight_names", "mappers", "name_vocabularies", "COMPONENTS", "STAGES"]

COMPONENTS = ("model", "language_model", "layers", "0", "1", "self_attn", "mixer", "mlp", "attn",
              "q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj",
              "weight", "weight_scale", "k_scale", "v_scale", "q_scale", "kv_scale", "output_scale")
"""The default vocabulary of name components that ``weight_names`` and ``mappers`` draw from."""


def _check_components(components: object) -> tuple[str, ...]:
    """A non-empty collection of non-empty, dot-free strings."""
    if isinstance(components, (str, bytes)) or not isinstance(components, (tuple, list, frozenset, set)):
        raise InvalidArgument(f"components={components!r}, but should be a tuple of name components")
    chosen = tuple(components)
    if not chosen or any(not isinstance(c, str) or not c or "." in c for c in chosen):
        raise InvalidArgument(f"components={components!r}, but should be non-empty strings without dots")
    return chosen


@st.composite
def weight_names(draw: st.DrawFn, *, min_parts: int = 1, max_parts: int = 6,
                 components: tuple[str, ...] = COMPONENTS) -> str:
    """Draws dotted weight names over a small vocabulary, so mapper entries often match.

    * ``min_parts``/``max_parts`` bound the number of dotted components.
    * ``components``: the vocabulary (default ``COMPONENTS``); pass the one given to ``mappers`` (e.g. from
      ``name_vocabularies()``) so the mappers' entries match the names most of the time.

    .. code-block:: pycon

        >>> weight_names(max_parts=3).example()
        'layers.self_attn.k_scale'
    """
    check_bounds("parts", min_parts, max_parts, floor=1)
    components = _check_components(components)
    return ".".join(draw(st.lists(st.sampled_from(components), min_size=min_parts, max_size=max_parts)))


@st.composite
def name_vocabularies(draw: st.DrawFn, *, min_size: int = 2, max_size: int = 4) -> tuple[str, ...]:
    """Draws small vocabularies of name components from ``COMPONENTS`` [MAP-5, MAP-7].

    Mappers drawn over one small vocabulary share keys in every stage, so when they are composed
    the merge order (which operand wins an equal key, where its entry sits) decides the result.

    * ``min_size``/``max_size`` bound the number of components.

    .. code-block:: pycon

        >>> name_vocabularies().example()
        ('k_proj', 'k_scale')
    """
    check_bounds("size", min_size, max_size, floor=1)
    return tuple(draw(st.lists(st.sampled_from(COMPONENTS), min_size=min_size, max_size=max_size, unique=True)))


def _keys(components: tuple[str, ...] = COMPONENTS) -> st.SearchStrategy[str]:
    """Non-empty entry keys: whole components with their dots, or fragments of one."""
    component = st.sampled_from(components)
    return st.one_of(component.map(lambda c: f".{c}."), component.map(lambda c: f"{c}."),
                     component.map(lambda c: f".{c}"), component.map(lambda c: c[: max(1, len(c) // 2)]))


def _values(components: tuple[str, ...] = COMPONENTS) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), _keys(components), st.just(""))


@st.composite
def mappers(draw: st.DrawFn, *, max_entries: int = 3, allow_drop: bool = True, stages: tuple[str, ...] = STAGES,
            components: tuple[str, ...] = COMPONENTS) -> WeightsMapper:
    """Draws reference ``WeightsMapper``s with up to ``max_entries`` entries per stage.

    * ``allow_drop``: whether entries may map to ``None`` (drop the weight).
    * ``stages``: the stages that may have entries (``regex``, ``substr``, ``stacked``, ``prefix``,
      ``suffix``); the others stay empty [MAP-1, MAP-7].
    * ``components``: the vocabulary keys and replacements are made of (default ``COMPONENTS``); a small one
      from ``name_vocabularies()`` makes separately drawn mappers share keys in every stage [MAP-5, MAP-7].

    .. code-block:: pycon

        >>> mappers(max_entries=1).example()
        WeightsMapper(substr={'.q_proj.': '.qkv_proj.'})
    """
    if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 0:
        raise InvalidArgument(f"max_entries={max_entries!r}, but should be an integer >= 0")
    check_flag("allow_drop", allow_drop)
    stages = check_choices("stages", stages, STAGES, allow_empty=True)
    components = _check_components(components)
    keys = _keys(components)
    values = _values(components) if allow_drop else _values(components).filter(lambda v: v is not None)
    entries = st.dictionaries(keys, values, max_size=max_entries)
    drawn = {
        "regex": st.dictionaries(keys.map(lambda k: re.escape(k) + _anchor(k)), values, max_size=max_entries),
        "substr": entries, "prefix": entries, "suffix": entries,
        "stacked": st.dictionaries(keys, st.tuples(keys, st.sampled_from(["q", "k", "v", 0, 1])),
                                   max_size=max_entries),
    }
    return draw(st.builds(WeightsMapper, **{stage: drawn[stage] if stage in stages else st.just({})
                                            for stage in STAGES}))


def _anchor(key: str) -> str:
    """Anchor regex keys that look like suffixes, as cache-scale mappers do."""
    return "$" if not key.endswith(".") else ""
