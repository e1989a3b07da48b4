"""Argument validation of the public strategies: bad arguments raise ``InvalidArgument``.

Most strategies check their arguments when called; a few checks can only run
when a value is drawn (a user strategy drawing something unusable), so every row
is called and then drawn once.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from loadspec.reference.spec import DEFAULT_SPEC
from loadspec.strategies import (checkpoint_layouts, kv_scale_sets, layer_graphs, mappers, scale_dtypes,
                                 scale_shapes, scale_tensors, scale_values, weight_names)


def draw_once(strategy: st.SearchStrategy) -> None:
    """Draw one value from ``strategy``, raising what drawing raises."""

    @settings(max_examples=1, database=None, deadline=None)
    @given(strategy)
    def draw(_):
        pass

    draw()


def row(func, kwargs: dict, *, id: str | None = None):
    return pytest.param(func, kwargs, id=id or f"{func.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")


SPEC = {"graph": DEFAULT_SPEC}

INVALID = [
    row(layer_graphs, {"min_layers": 0}),
    row(layer_graphs, {"min_layers": 1.5}),
    row(layer_graphs, {"min_layers": 3, "max_layers": 2}),
    row(layer_graphs, {"max_layers": "3"}),
    row(layer_graphs, {"attention": ()}),
    row(layer_graphs, {"attention": ("gqa",)}),
    row(layer_graphs, {"linear_quants": ("int4",)}),
    row(layer_graphs, {"kv_cache_dtypes": ("fp9",)}),
    row(layer_graphs, {"kv_cache_dtypes": ("fp8_e5m2",), "allow_unquantized": False}),
    row(layer_graphs, {"kv_cache_dtypes": ("fp8_e5m2",), "linear_quants": ("fp8_per_tensor",)}),
    row(layer_graphs, {"quant_methods": ("awq",)}),
    row(layer_graphs, {"quant_methods": (), "allow_unquantized": False}),
    row(layer_graphs, {"quant_methods": (), "linear_quants": ("fp8_per_channel",)}),
    row(layer_graphs, {"containers": ("attention",)}),
    row(layer_graphs, {"params_dtypes": ("float8_e4m3fn",)}),
    row(layer_graphs, {"allow_unquantized": "yes"}),
    row(layer_graphs, {"allow_tied": 1}),
    row(layer_graphs, {"allow_wrappers": None}),
    row(layer_graphs, {"max_hidden": 0}),
    row(layer_graphs, {"max_hidden": 8.0}),
    row(scale_shapes, {"valid": 1}),
    row(scale_values, {"allow_sentinel": None}),
    row(scale_values, {"allow_invalid": "no"}),
    row(scale_tensors, {"valid_shape": "yes"}),
    row(scale_tensors, {"dtypes": torch.float32}, id="scale_tensors(dtypes=<a dtype, not a strategy>)"),
    row(scale_tensors, {"values": 0.5}),
    row(scale_tensors, {"dtypes": st.just(torch.int8)}, id="scale_tensors(dtypes=just(int8)) [at draw]"),
    row(kv_scale_sets, {"kinds": ()}),
    row(kv_scale_sets, {"kinds": ("kv",)}),
    row(kv_scale_sets, {"values": 0.5}),
    row(checkpoint_layouts, {"graph": "llama"}),
    row(checkpoint_layouts, {**SPEC, "producers": ()}, id="checkpoint_layouts(producers=())"),
    row(checkpoint_layouts, {**SPEC, "producers": ("gguf",)}, id="checkpoint_layouts(producers=('gguf',))"),
    row(checkpoint_layouts, {**SPEC, "orders": ("random",)}, id="checkpoint_layouts(orders=('random',))"),
    row(checkpoint_layouts, {**SPEC, "orders": ()}, id="checkpoint_layouts(orders=())"),
    row(checkpoint_layouts, {**SPEC, "allow_sharding": 1}, id="checkpoint_layouts(allow_sharding=1)"),
    row(checkpoint_layouts, {**SPEC, "allow_missing": None}, id="checkpoint_layouts(allow_missing=None)"),
    row(checkpoint_layouts, {**SPEC, "allow_extra": "yes"}, id="checkpoint_layouts(allow_extra='yes')"),
    row(checkpoint_layouts, {**SPEC, "kv_scales": {"k": 0.5}}, id="checkpoint_layouts(kv_scales=<a dict>)"),
    row(checkpoint_layouts, {**SPEC, "kv_scales": st.just({"kv": 0.5})},
        id="checkpoint_layouts(kv_scales=just({'kv': 0.5})) [at draw]"),
    row(weight_names, {"min_parts": 0}),
    row(weight_names, {"min_parts": 3, "max_parts": 2}),
    row(mappers, {"max_entries": -1}),
]


@pytest.mark.parametrize("func, kwargs", INVALID)
def test_raise_invalid_argument(func, kwargs):
    with pytest.raises(InvalidArgument):
        draw_once(func(**kwargs))


VALID = [
    row(layer_graphs, {}),
    row(layer_graphs, {"min_layers": 2, "max_layers": None}),
    row(layer_graphs, {"quant_methods": ()}),
    row(layer_graphs, {"kv_cache_dtypes": ("fp8_e5m2",)}),
    row(layer_graphs, {"max_hidden": 1}),
    row(scale_shapes, {"valid": False}),
    row(scale_dtypes, {}),
    row(scale_values, {"allow_sentinel": False, "allow_invalid": True}),
    row(scale_tensors, {"dtypes": st.just(torch.float16), "values": scale_values(allow_invalid=True)},
        id="scale_tensors(dtypes=just(float16), values=scale_values(allow_invalid=True))"),
    row(kv_scale_sets, {"kinds": ("k",)}),
    row(checkpoint_layouts, {**SPEC}, id="checkpoint_layouts(DEFAULT_SPEC)"),
    row(checkpoint_layouts, {**SPEC, "producers": ("modelopt", "quark"), "allow_missing": True, "allow_extra": True},
        id="checkpoint_layouts(DEFAULT_SPEC, producers=other configs, allow_missing, allow_extra)"),
]


@pytest.mark.parametrize("func, kwargs", VALID)
def test_valid_arguments_draw(func, kwargs):
    draw_once(func(**kwargs))
