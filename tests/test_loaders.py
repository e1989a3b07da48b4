"""LOAD, reference internals: error classes and messages, ``AutoWeightsLoader`` options, whole-model rejections.

``conformance/test_load.py`` checks LOAD-1..10 through the adapter (``ValueError`` naming the
weight, a plain module tree left unchanged). What stays here: the reference's error classes
and message details (close matches, duplicate targets), rejections on a built model, the
effective mapper, ``skip_substrs`` and ``ignore_unexpected_suffixes``, and the missing-scales warning.
"""

from __future__ import annotations

import pytest
import torch

from loadspec.conformance.assertions import assert_unchanged
from loadspec.reference import api
from loadspec.reference.auto_loader import AutoWeightsLoader
from loadspec.reference.errors import LoadspecError, MissingWeightsError, ShapeMismatchError, UnknownWeightError
from loadspec.reference.kv_cache import MissingKVScalesWarning
from loadspec.reference.loaders import default_weight_loader
from loadspec.reference.mapper import WeightsMapper
from loadspec.reference.spec import DEFAULT_SPEC, uniform_layers
from loadspec.strategies.synthetic import synthetic_checkpoint


@pytest.fixture
def loaded_model():
    model = api.build(DEFAULT_SPEC)
    api.first_load(model, synthetic_checkpoint(DEFAULT_SPEC).items())
    return model


def test_shape_mismatch_raises_shape_mismatch_error_naming_the_parameter():
    param = torch.nn.Parameter(torch.zeros(2, 3), requires_grad=False)
    param.loadspec_name = "layer.weight"
    with pytest.raises(ShapeMismatchError) as info:
        default_weight_loader(param, torch.ones(3, 2))
    assert "(3, 2)" in str(info.value) and "(2, 3)" in str(info.value) and "layer.weight" in str(info.value)
    assert torch.equal(param, torch.zeros(2, 3))


def test_first_load_returns_the_names_its_effective_mapper_gives():
    model = api.build(DEFAULT_SPEC)
    checkpoint = synthetic_checkpoint(DEFAULT_SPEC, producer="modelopt")
    loaded = api.first_load(model, checkpoint.items())
    expected = {AutoWeightsLoader(model).effective_mapper(model.mapper).map_name(n) for n in checkpoint}
    assert loaded == expected
    assert "model.layers.0.self_attn.attn.k_scale" in loaded and "model.layers.0.self_attn.qkv_proj.weight" in loaded


REJECTIONS = {
    "unknown name": ("model.layers.0.self_attn.qk_proj.weight", torch.zeros(4, 16), UnknownWeightError,
                     ["qk_proj", "close matches", "qkv_proj"]),
    "shape mismatch": ("model.layers.1.mlp.up_proj.weight", torch.zeros(24, 15), ShapeMismatchError,
                       ["up_proj", "(24, 15)"]),
    "non-scalar scale": ("model.layers.1.self_attn.k_scale", torch.ones(2), LoadspecError,
                         ["k_scale", "(2,)"]),
    "nested name": ("model.layers.0.self_attn.o_proj.weight.extra", torch.zeros(1), UnknownWeightError,
                    ["below the parameter"]),
    "duplicate target": ("model.layers.0.self_attn.kv_scale", torch.tensor(3.0), LoadspecError,
                         ["both map to", "attn.k_scale"]),
}


@pytest.mark.parametrize("case", REJECTIONS, ids=str)
@pytest.mark.parametrize("position", ["first", "last"])
def test_reload_rejection_raises_its_error_class_and_changes_nothing(loaded_model, model_state, case, position):
    name, tensor, error, needles = REJECTIONS[case]
    mapper = AutoWeightsLoader(loaded_model).effective_mapper(loaded_model.mapper)
    replaced = mapper.map_name_with_shard(name)
    weights = [(n, t) for n, t in synthetic_checkpoint(DEFAULT_SPEC, seed=7, kv_scales={"k": 3.0, "v": 3.0}).items()
               if case == "duplicate target" or mapper.map_name_with_shard(n) != replaced]
    weights = [(name, tensor), *weights] if position == "first" else [*weights, (name, tensor)]
    before = model_state(loaded_model)
    with pytest.raises(error) as info:
        api.reload(loaded_model, weights)
    assert isinstance(info.value, ValueError)
    for needle in needles:
        assert needle in str(info.value), f"message={str(info.value)!r}, but should mention {needle!r}"
    assert_unchanged(f"model after rejecting {case}", before, model_state(loaded_model), "LOAD-6")


def test_first_load_unknown_weight_error_leaves_the_built_model_unchanged(model_state):
    model = api.build(DEFAULT_SPEC)
    before = model_state(model)
    weights = [*synthetic_checkpoint(DEFAULT_SPEC).items(), ("model.nope.weight", torch.zeros(1))]
    with pytest.raises(UnknownWeightError):
        api.first_load(model, weights)
    assert_unchanged("model after a rejected first load", before, model_state(model), "LOAD-6")


def test_skip_substrs_see_the_stacked_names_of_a_built_model():
    model = api.build(DEFAULT_SPEC)
    checkpoint = synthetic_checkpoint(DEFAULT_SPEC)
    loader = AutoWeightsLoader(model, skip_substrs=[".qkv_proj."])
    loaded = loader.load_weights(checkpoint.items(), mapper=model.mapper)
    assert not any(".qkv_proj." in n or ".q_proj." in n for n in loaded)
    assert "model.layers.0.self_attn.o_proj.weight" in loaded


def test_first_load_raises_missing_weights_error_and_warns_on_missing_kv_scales():
    checkpoint = synthetic_checkpoint(DEFAULT_SPEC)
    missing = {k: v for k, v in checkpoint.items() if k != "model.layers.1.self_attn.v_proj.weight"}
    model = api.build(DEFAULT_SPEC)
    with pytest.raises(MissingWeightsError, match="model.layers.1.self_attn.qkv_proj.weight"):
        api.first_load(model, missing.items())
    no_scales = {k: v for k, v in checkpoint.items() if not k.endswith(("k_scale", "v_scale"))}
    with pytest.warns(MissingKVScalesWarning):
        api.first_load(api.build(DEFAULT_SPEC), no_scales.items())


def test_ignore_unexpected_suffixes_never_drops_a_scale_a_module_could_take():
    unquantized = api.build(DEFAULT_SPEC.with_(quant_method=None, layers=uniform_layers(1)))
    loader = AutoWeightsLoader(unquantized, ignore_unexpected_suffixes=[".k_scale", ".v_scale"])
    with pytest.raises(UnknownWeightError, match="k_scale"):
        loader.plan([("model.layers.0.self_attn.attn.k_scale", torch.tensor(0.5))])
    assert loader.plan([("model.layers.0.self_attn.other.k_scale", torch.tensor(0.5))]) == []


def test_a_shard_id_on_a_scale_parameter_is_a_shape_mismatch_error_before_any_write(model_state):
    """A ``stacked`` mapper entry landing on a KV-cache scale is rejected naming it (it crashed in ``first_load``)."""
    model = api.build(DEFAULT_SPEC)
    weights = [(name, torch.ones(param.shape, dtype=param.dtype)) for name, param in model.named_parameters()
               if ".attn." not in name]
    weights.append(("model.layers.0.self_attn.attn.k_scale_src", torch.tensor(0.5)))
    model.mapper = model.mapper | WeightsMapper(stacked={"k_scale_src": ("k_scale", 0)})
    before = model_state(model)
    with pytest.raises(ShapeMismatchError, match=r"model\.layers\.0\.self_attn\.attn\.k_scale: is not a fused "
                                                 r"parameter, but got shard 0"):
        api.first_load(model, weights)
    assert_unchanged("first_load", before, model_state(model), "LOAD-6")
