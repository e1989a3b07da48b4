"""Argument validation of the public strategies: bad arguments raise ``InvalidArgument`` when drawn.

As in Hypothesis, calling a strategy never raises: its arguments are checked when a
value is drawn, the error names the argument, and the strategy's ``repr`` is the call.
Rows cover the module-level strategies and those of ``make_strategies_namespace``.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from loadspec.conformance.adapter import CAPABILITIES
from loadspec.reference.spec import DEFAULT_SPEC, ModelSpec
from loadspec.strategies import (
    checkpoint_layouts,
    kv_scale_sets,
    layer_graphs,
    make_strategies_namespace,
    mappers,
    scale_dtypes,
    scale_shapes,
    scale_tensors,
    scale_values,
    weight_names,
)
from loadspec.strategies.mappers import name_vocabularies
from loadspec.strategies.scales import inexact_scale_values


class Declaring:
    """An adapter as the namespace sees it: a name and capabilities."""

    def __init__(self, name, capabilities) -> None:
        self.name, self.capabilities = name, capabilities


FULL = make_strategies_namespace(Declaring("full", frozenset(CAPABILITIES)))
BARE = make_strategies_namespace(Declaring("bare", {"model", "primitives"}))


def draw_once(strategy: st.SearchStrategy) -> None:
    """Draw one value from ``strategy``, raising what drawing raises."""

    @settings(max_examples=1, database=None, deadline=None)
    @given(strategy)
    def draw(_):
        pass

    draw()


def call_id(func, kwargs: dict) -> str:
    owner = next((f"{ns!r}." for ns in (FULL, BARE) if func in vars(ns).values()), "")
    return f"{owner}{func.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def row(func, kwargs: dict, *, match: str | None = None, id: str | None = None):
    """A call and what an error message must match (default: the last argument's name)."""
    match = match or re.escape(next(reversed(kwargs), ""))
    return pytest.param(func, kwargs, match, id=id or call_id(func, kwargs))


SPEC = {"graph": DEFAULT_SPEC}

INVALID = [
    row(layer_graphs, {"min_layers": 0}),
    row(layer_graphs, {"min_layers": 1.5}),
    row(layer_graphs, {"min_layers": 3, "max_layers": 2}),
    row(layer_graphs, {"max_layers": "3"}),
    row(layer_graphs, {"attention": ()}),
    row(layer_graphs, {"attention": ("gqa",)}),
    row(layer_graphs, {"attention": "mha"}),
    row(layer_graphs, {"quant_methods": 8}),
    row(layer_graphs, {"linear_quants": ("int4",)}),
    row(layer_graphs, {"kv_cache_dtypes": ("fp9",)}),
    row(layer_graphs, {"kv_cache_dtypes": ("fp8_e5m2",), "allow_unquantized": False}, match="kv_cache_dtypes"),
    row(layer_graphs, {"kv_cache_dtypes": ("fp8_e5m2",), "linear_quants": ("fp8_per_tensor",)}),
    row(layer_graphs, {"quant_methods": ("awq",)}),
    row(layer_graphs, {"quant_methods": (), "allow_unquantized": False}, match="quant_methods=()"),
    row(layer_graphs, {"quant_methods": (), "linear_quants": ("fp8_per_channel",)}),
    row(layer_graphs, {"containers": ("attention",)}),
    row(layer_graphs, {"params_dtypes": ("float8_e4m3fn",)}),
    row(layer_graphs, {"allow_unquantized": "yes"}),
    row(layer_graphs, {"allow_tied": 1}),
    row(layer_graphs, {"allow_wrappers": None}),
    row(layer_graphs, {"allow_per_channel_any_format": "no"}),
    row(layer_graphs, {"linear_quants": ("fp8_per_channel",), "quant_methods": ("fp8", "modelopt"),
                       "allow_unquantized": False, "allow_per_channel_any_format": False},
        match=r"per-channel FP8 exists only in \('compressed-tensors', 'quark'\)"),
    row(layer_graphs, {"max_hidden": 0}),
    row(layer_graphs, {"max_hidden": 8.0}),
    row(scale_shapes, {"valid": 1}),
    row(scale_values, {"allow_sentinel": None}),
    row(scale_values, {"allow_invalid": "no"}),
    row(scale_tensors, {"valid_shape": "yes"}),
    row(scale_tensors, {"dtypes": torch.float32}, id="scale_tensors(dtypes=<a dtype, not a strategy>)"),
    row(scale_tensors, {"values": 0.5}),
    row(scale_tensors, {"dtypes": st.just(torch.int8)}, id="scale_tensors(dtypes=just(int8))"),
    row(inexact_scale_values, {"dtype": torch.float32}),
    row(kv_scale_sets, {"kinds": ()}),
    row(kv_scale_sets, {"kinds": ("kv",)}),
    row(kv_scale_sets, {"values": 0.5}),
    row(kv_scale_sets, {"kinds": ("k",), "required": ("v",)}),
    row(kv_scale_sets, {"required": "k"}),
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
        id="checkpoint_layouts(kv_scales=just({'kv': 0.5}))"),
    row(weight_names, {"min_parts": 0}),
    row(weight_names, {"min_parts": 3, "max_parts": 2}),
    row(mappers, {"max_entries": -1}),
    row(mappers, {"allow_drop": "no"}),
    row(mappers, {"stages": ("regexp",)}),
    row(mappers, {"stages": "regex"}),
    row(mappers, {"components": "k_proj"}),
    row(mappers, {"components": ("self_attn.k_proj",)}),
    row(weight_names, {"components": ()}),
    row(weight_names, {"components": ("",)}),
    row(name_vocabularies, {"min_size": 0}),
    row(name_vocabularies, {"min_size": 3, "max_size": 2}),
    # make_strategies_namespace: choices the adapter does not declare, named with the capability they need
    row(BARE.layer_graphs, {"attention": ("mla",)}, match=r"attention contains \['mla'\].*\['mla'\]"),
    row(BARE.layer_graphs, {"linear_quants": ("none", "fp8_per_channel")},
        match=r"linear_quants contains \['fp8_per_channel'\].*\['fp8_per_channel'\]"),
    row(BARE.layer_graphs, {"kv_cache_dtypes": ("fp8", "int8_per_token_head")},
        match=r"kv_cache_dtypes contains \['int8_per_token_head'\].*\['per_token_head_kv'\]"),
    row(BARE.layer_graphs, {"containers": ("mixer",)}, match=r"containers.*\['mixer_container'\]"),
    row(BARE.layer_graphs, {"params_dtypes": ("float32", "bfloat16")},
        match=r"params_dtypes.*\['reduced_precision_params'\]"),
    row(BARE.layer_graphs, {"allow_tied": True}, match="allow_tied=True.*'tied_embeddings'"),
    row(BARE.layer_graphs, {"allow_wrappers": True}, match="allow_wrappers=True.*'nested_wrappers'"),
    row(BARE.layer_graphs, {"allow_tied": "yes"}),
    row(FULL.layer_graphs, {"attention": ("gqa",)}),
    row(FULL.layer_graphs, {"containers": "mixer"}),
    row(FULL.layer_graphs, {"min_layers": 0}),
    row(BARE.checkpoint_layouts, {**SPEC},
        match=r"graph needs the capabilities \['fp8_per_channel', 'fp8_per_channel_any_format', 'fp8_per_tensor'\]",
        id="make_strategies_namespace(bare).checkpoint_layouts(DEFAULT_SPEC)"),
    row(FULL.checkpoint_layouts, {**SPEC, "producers": ("gguf",)},
        id="make_strategies_namespace(full).checkpoint_layouts(producers=('gguf',))"),
    row(FULL.checkpoint_layouts, {"graph": None}),
]


@pytest.mark.parametrize("func, kwargs, match", INVALID)
def test_raise_invalid_argument_when_drawn(func, kwargs, match):
    strategy = func(**kwargs)  # never raises: the check is deferred to the draw
    with pytest.raises(InvalidArgument, match=match):
        draw_once(strategy)


@pytest.mark.parametrize("func, kwargs, match", INVALID)
def test_an_invalid_strategy_repr_is_its_call(func, kwargs, match):
    shown = " ".join(repr(func(**kwargs)).split())
    assert shown.startswith(f"{func.__name__}("), shown
    for name in kwargs:
        assert name in shown or name == "graph", f"{name} is not in {shown}"


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
    row(inexact_scale_values, {"dtype": torch.float16}),
    row(kv_scale_sets, {"kinds": ("k",)}),
    row(checkpoint_layouts, {**SPEC}, id="checkpoint_layouts(DEFAULT_SPEC)"),
    row(checkpoint_layouts, {**SPEC, "producers": ("modelopt", "quark"), "allow_missing": True, "allow_extra": True},
        id="checkpoint_layouts(DEFAULT_SPEC, producers=other configs, allow_missing, allow_extra)"),
    row(kv_scale_sets, {"kinds": ("k", "v"), "required": ("k", "v")}),
    row(mappers, {"max_entries": 0, "allow_drop": False}),
    row(mappers, {"stages": ("stacked",), "components": ("k_proj", "weight")}),
    row(mappers, {"stages": ()}),
    row(weight_names, {"components": ("k_proj",)}),
    row(name_vocabularies, {"min_size": 1, "max_size": 1}),
    row(weight_names, {"min_parts": 2, "max_parts": 2}),
    row(FULL.layer_graphs, {}),
    row(FULL.layer_graphs, {"attention": ("mla",), "allow_tied": True, "params_dtypes": ("float16",)}),
    row(BARE.layer_graphs, {}),
    row(BARE.layer_graphs, {"kv_cache_dtypes": ("fp8_e5m2",), "allow_tied": False}),
    row(BARE.checkpoint_layouts, {"graph": ModelSpec()},
        id="make_strategies_namespace(bare).checkpoint_layouts(ModelSpec())"),
    row(FULL.checkpoint_layouts, {**SPEC, "producers": ("modelopt",)},
        id="make_strategies_namespace(full).checkpoint_layouts(DEFAULT_SPEC, producers=('modelopt',))"),
]


@pytest.mark.parametrize("func, kwargs, match", VALID)
def test_valid_arguments_draw(func, kwargs, match):
    draw_once(func(**kwargs))


REPRS = [
    (layer_graphs(max_layers=1), "layer_graphs(max_layers=1)"),
    (layer_graphs(), "layer_graphs()"),
    (scale_values(allow_sentinel=False), "scale_values(allow_sentinel=False)"),
    (scale_shapes(valid=False), "scale_shapes(valid=False)"),
    (scale_dtypes(), "scale_dtypes()"),
    (scale_tensors(valid_shape=False), "scale_tensors(valid_shape=False)"),
    (kv_scale_sets(kinds=("k",), required=("k",)), "kv_scale_sets(kinds=('k',), required=('k',))"),
    (weight_names(max_parts=2), "weight_names(max_parts=2)"),
    (mappers(max_entries=1), "mappers(max_entries=1)"),
    (layer_graphs(min_layers=0), "layer_graphs(min_layers=0)"),
    (FULL.layer_graphs(attention=("mha",)), "layer_graphs(attention=('mha',))"),
    (BARE.scale_tensors(valid_shape=False), "scale_tensors(valid_shape=False)"),
]


@pytest.mark.parametrize("strategy, expected", REPRS, ids=[expected for _, expected in REPRS])
def test_repr_is_the_public_call(strategy, expected):
    assert repr(strategy) == expected


@pytest.mark.parametrize("func", [checkpoint_layouts, FULL.checkpoint_layouts], ids=["module", "namespace"])
def test_checkpoint_layouts_repr_shows_the_graph_and_the_arguments(func):
    shown = " ".join(repr(func(DEFAULT_SPEC, producers=("modelopt",))).split())
    assert shown.startswith("checkpoint_layouts(ModelSpec(layers=(LayerSpec(qkv_quant='fp8_per_tensor',"), shown
    assert shown.endswith("params_dtype='float32', rms_norm_eps=1e-05, rope_theta=10000.0), producers=('modelopt',))")


@pytest.mark.parametrize("adapter, match", [
    (object(), "name=None"),
    (Declaring("", {"model"}), "name=''"),
    (Declaring("engine", "model"), "capabilities='model'"),
    (Declaring("engine", None), "capabilities=None"),
    (Declaring("engine", {1}), "every one should be a string"),
], ids=["no-name", "empty-name", "capabilities-a-string", "no-capabilities", "capability-not-a-string"])
def test_make_strategies_namespace_rejects_what_is_not_an_adapter(adapter, match):
    with pytest.raises(InvalidArgument, match=re.escape(match)):
        make_strategies_namespace(adapter)
