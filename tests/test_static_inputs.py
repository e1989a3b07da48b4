"""The reference's static activation scales: decided from the config/spec, never the method's name [STATIC-1..3]."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from loadspec.reference import api
from loadspec.reference.errors import MissingWeightsError, UnsupportedSchemeError
from loadspec.reference.quant_config import activation_scheme_of, checkpoint_dtype_of
from loadspec.reference.spec import DEFAULT_SPEC
from loadspec.strategies.capabilities import STATIC_INPUT_SCALES, spec_capabilities
from loadspec.strategies.layouts import CheckpointLayout
from loadspec.strategies.producers import quantization_config
from loadspec.strategies.static import (
    as_static,
    input_scale_names,
    static_checkpoint,
    static_input_layouts,
    static_input_tensors,
)

PRODUCER_OF = {"compressed-tensors": "compressed-tensors", "quark": "quark", "fp8": "autofp8", "modelopt": "modelopt"}


@pytest.mark.parametrize("method", sorted(PRODUCER_OF))
@pytest.mark.parametrize("scheme", ["static", "dynamic"])
def test_activation_scheme_read_from_each_producers_config(method, scheme):
    config = quantization_config(PRODUCER_OF[method], activation_scheme=scheme)
    assert activation_scheme_of(config) == ("static" if method == "modelopt" else scheme)


def test_no_config_is_dynamic_and_disagreeing_groups_are_rejected():
    assert activation_scheme_of(None) == "dynamic"
    config = quantization_config("compressed-tensors", activation_scheme="static")
    config["config_groups"]["group_1"] = dict(quantization_config("compressed-tensors")["config_groups"]["group_0"])
    with pytest.raises(UnsupportedSchemeError, match="disagree"):
        activation_scheme_of(config)
    with pytest.raises(UnsupportedSchemeError, match="activation_scheme"):
        activation_scheme_of({"quant_method": "fp8", "activation_scheme": "per-token"})
    config = quantization_config("compressed-tensors")
    config["config_groups"]["group_0"]["input_activations"] = {"dynamic": "no"}
    with pytest.raises(UnsupportedSchemeError, match="dynamic"):
        activation_scheme_of(config)


def test_spec_decides_static_inputs_from_its_field():
    ct = DEFAULT_SPEC.with_(quant_method="compressed-tensors")
    assert not ct.static_input_scales
    assert ct.with_(activation_scheme="static").static_input_scales
    assert DEFAULT_SPEC.with_(quant_method="modelopt").static_input_scales  # the format's only scheme
    with pytest.raises(ValueError, match="does not exist for quant_method='modelopt'"):
        DEFAULT_SPEC.with_(quant_method="modelopt", activation_scheme="dynamic")
    with pytest.raises(ValueError, match="activation_scheme='per-token'"):
        DEFAULT_SPEC.with_(activation_scheme="per-token")


def test_capability_needed_only_where_the_config_decides():
    assert STATIC_INPUT_SCALES in spec_capabilities(DEFAULT_SPEC.with_(activation_scheme="static"))
    assert STATIC_INPUT_SCALES not in spec_capabilities(DEFAULT_SPEC.with_(quant_method="modelopt"))
    assert STATIC_INPUT_SCALES not in spec_capabilities(DEFAULT_SPEC)


def test_compressed_tensors_static_model_loads_and_processes_input_scales():
    spec = as_static(DEFAULT_SPEC.with_(quant_method="compressed-tensors"))
    model = api.build(spec)
    assert tuple(model.model.layers[0].self_attn.qkv_proj.input_scale.shape) == (3,)  # one per shard
    layout = CheckpointLayout(spec, producer="compressed-tensors", seed=3)
    weights = static_checkpoint(layout)
    api.first_load(model, weights)
    state, given = api.export(model), dict(weights)
    shards = [given[f"model.layers.0.self_attn.{p}_proj.input_scale"].float().reshape(()) for p in "qkv"]
    assert torch.equal(state["model.layers.0.self_attn.qkv_proj.input_scale"], torch.stack(shards).max())
    assert state["model.layers.0.mlp.down_proj.input_scale"].shape == ()  # per-channel weights too
    assert "model.layers.0.self_attn.o_proj.input_scale" not in state  # unquantized: none


def test_missing_shard_input_scale_names_the_engine_parameter():
    spec = as_static(DEFAULT_SPEC)
    layout = CheckpointLayout(spec, producer="autofp8", missing=("model.layers.1.self_attn.k_proj.input_scale",))
    with pytest.raises(MissingWeightsError, match=r"model\.layers\.1\.self_attn\.qkv_proj\.input_scale"):
        api.first_load(api.build(spec), static_checkpoint(layout))


def test_static_checkpoint_never_gives_a_scale_twice():
    spec = DEFAULT_SPEC.with_(quant_method="modelopt")  # the synthetic ModelOpt checkpoint writes them already
    layout = CheckpointLayout(spec, producer="modelopt")
    names = [name for name, _ in static_checkpoint(layout)]
    assert len(names) == len(set(names))
    assert set(input_scale_names(spec)) <= set(names)
    assert static_input_tensors(CheckpointLayout(DEFAULT_SPEC)) == {}


def test_as_static_rejects_graphs_without_fp8_linears():
    with pytest.raises(InvalidArgument, match="no FP8 linear"):
        as_static(DEFAULT_SPEC.with_(layers=DEFAULT_SPEC.layers[:1] and (type(DEFAULT_SPEC.layers[0])(),)))
    with pytest.raises(InvalidArgument, match="no static activation scheme"):
        as_static(DEFAULT_SPEC.with_(quant_method=None, layers=(type(DEFAULT_SPEC.layers[0])(),)))


def test_static_input_layouts_draw_static_specs_of_the_producer_table():
    @settings(max_examples=10, deadline=None)
    @given(data=st.data())
    def run(data):
        layout = data.draw(static_input_layouts(DEFAULT_SPEC.with_(quant_method="quark")), label="layout")
        assert layout.spec.static_input_scales and layout.producer == "quark"
        assert set(input_scale_names(layout.spec)) <= {name for name, _ in static_checkpoint(layout)}

    run()


@pytest.mark.parametrize("config, expected", [
    ({"dtype": "bfloat16"}, "bfloat16"), ({"torch_dtype": "float16"}, "float16"), ({}, "float32"), (None, "float32"),
    ({"torch_dtype": "torch.bfloat16"}, "bfloat16"), ({"dtype": "float16", "torch_dtype": "bfloat16"}, "float16"),
])
def test_checkpoint_dtype_read_from_the_config(config, expected):
    """The model's dtype comes from config.json (dtype, else torch_dtype) [DTYPE-1]."""
    assert checkpoint_dtype_of(config) == expected


def test_unknown_checkpoint_dtype_is_unsupported():
    with pytest.raises(UnsupportedSchemeError, match="float8_e4m3fn"):
        checkpoint_dtype_of({"torch_dtype": "float8_e4m3fn"})
