"""The reference's per-head KV-cache scales (compressed-tensors attn_head) [HEADS-1..7]."""

from __future__ import annotations

import re

import pytest
import torch

from loadspec.reference import api
from loadspec.reference.errors import ScaleShapeError, ScaleValueError, UnsupportedSchemeError
from loadspec.reference.kv_cache import MissingKVScalesWarning, reduce_q_to_kv_heads
from loadspec.reference.quant_config import QuantConfig, kv_scale_strategy_of
from loadspec.reference.scales import HeadScaleParameter
from loadspec.reference.spec import DEFAULT_SPEC
from loadspec.strategies.capabilities import KV_SCALES_PER_HEAD, spec_capabilities
from loadspec.strategies.heads import as_per_head, head_checkpoint
from loadspec.strategies.layouts import CheckpointLayout
from loadspec.strategies.producers import quantization_config

SPEC = as_per_head(DEFAULT_SPEC.with_(num_heads=4, num_kv_heads=2))
ATTN = "model.layers.0.self_attn.attn"


def _values(k=(0.5, 0.25), v=(0.125, 2.0), q=(1.0, 3.0, 2.0, 0.5)) -> dict:
    kinds = {name: heads for name, heads in (("k", k), ("v", v), ("q", q)) if heads is not None}
    return {index: dict(kinds) for index in range(len(SPEC.layers))}


def _loaded(values, spec=SPEC):
    model = api.build(spec)
    layout = CheckpointLayout(spec, producer="compressed-tensors", kv_scales={})
    api.first_load(model, head_checkpoint(layout, values))
    return model, layout


def _attn(model):
    return model.get_submodule(ATTN)


@pytest.mark.parametrize("shape", [(2, 1, 1), (2, 1), (2,)])
def test_head_scale_parameter_takes_the_per_head_shapes(shape):
    param = HeadScaleParameter(2)
    assert tuple(param.shape) == (2,) and bool((param == -1.0).all()) and param.dtype == torch.float32
    param.weight_check(param, torch.tensor([0.5, 0.25]).reshape(shape))
    param.weight_loader(param, torch.tensor([0.5, 0.25], dtype=torch.bfloat16).reshape(shape))
    assert param.tolist() == [0.5, 0.25]


@pytest.mark.parametrize("shape", [(), (1,), (3, 1, 1), (1, 2, 1)])
def test_head_scale_parameter_rejects_other_shapes_naming_both(shape):
    param = HeadScaleParameter(2)
    param.loadspec_name = "x.attn.k_scale"
    with pytest.raises(ScaleShapeError, match=rf"x\.attn\.k_scale: .*\(2, 1, 1\).*got shape {re.escape(str(shape))}"):
        param.weight_check(param, torch.full(shape, 0.5))
    assert bool((param == -1.0).all())


def test_head_scale_values_are_checked_per_head():
    param = HeadScaleParameter(2)
    with pytest.raises(ScaleValueError):
        param.weight_check(param, torch.tensor([0.5, float("nan")]).reshape(2, 1, 1))


def test_per_head_is_compressed_tensors_and_mha_only():
    with pytest.raises(UnsupportedSchemeError, match="compressed-tensors only"):
        QuantConfig("fp8", kv_scale_strategy="attn_head")
    with pytest.raises(ValueError, match="MHA/GQA"):
        SPEC.with_(attention="mla")
    with pytest.raises(ValueError, match="kv_scale_strategy='channel'"):
        SPEC.with_(kv_scale_strategy="channel")
    assert KV_SCALES_PER_HEAD in spec_capabilities(SPEC) and KV_SCALES_PER_HEAD not in spec_capabilities(DEFAULT_SPEC)


def test_kv_scale_strategy_read_from_the_config():
    config = quantization_config("compressed-tensors")
    assert kv_scale_strategy_of(config) == "tensor" and kv_scale_strategy_of(None) == "tensor"
    config["kv_cache_scheme"]["strategy"] = "attn_head"
    assert kv_scale_strategy_of(config) == "attn_head"
    assert kv_scale_strategy_of(quantization_config("autofp8")) == "tensor"
    config["kv_cache_scheme"]["strategy"] = "channel"
    with pytest.raises(UnsupportedSchemeError, match="channel"):
        kv_scale_strategy_of(config)


def test_first_load_gives_per_head_outputs_and_max_mirrors():
    model = api.build(SPEC)
    attn = _attn(model)
    pointers = {name: getattr(attn, name).data_ptr() for name in ("_q_scale", "_k_scale", "_v_scale")}
    layout = CheckpointLayout(SPEC, producer="compressed-tensors", kv_scales={})
    api.first_load(model, head_checkpoint(layout, _values()))
    assert attn._k_scale.tolist() == [0.5, 0.25] and attn._v_scale.tolist() == [0.125, 2.0]
    assert attn._q_scale.tolist() == [3.0, 2.0]  # max over each KV head's query heads
    assert (attn._k_scale_float, attn._v_scale_float, attn._q_scale_float) == (0.5, 2.0, 3.0)
    assert float(attn._k_scale_cpu) == 0.5 and float(attn._v_scale_cpu) == 2.0
    assert {name: getattr(attn, name).data_ptr() for name in pointers} == pointers
    state = api.export(model)
    assert state[f"{ATTN}.k_scale"].shape == (2,) and state[f"{ATTN}.prob_scale"].shape == ()


def test_reload_writes_per_head_outputs_in_place():
    model, layout = _loaded(_values())
    attn = _attn(model)
    pointers = {name: getattr(attn, name).data_ptr() for name in ("_q_scale", "_k_scale", "_v_scale")}
    api.reload(model, head_checkpoint(layout, _values(k=(1.0, 4.0), v=(0.5, 0.5), q=(0.25, 0.5, 8.0, 1.0))))
    assert attn._k_scale.tolist() == [1.0, 4.0] and attn._q_scale.tolist() == [0.5, 8.0]
    assert attn._k_scale_float == 4.0 and attn._q_scale_float == 8.0
    assert {name: getattr(attn, name).data_ptr() for name in pointers} == pointers


def test_missing_kinds_take_per_tensor_defaults_per_head():
    model, _ = _loaded(_values(v=None, q=None))
    assert _attn(model)._v_scale.tolist() == [0.5, 0.25] and _attn(model)._q_scale.tolist() == [1.0, 1.0]
    with pytest.warns(MissingKVScalesWarning):
        model, _ = _loaded(_values(k=None, v=None))
    assert _attn(model)._k_scale.tolist() == [1.0, 1.0] == _attn(model)._v_scale.tolist()


def test_a_wrong_head_count_leaves_the_model_unchanged():
    model, layout = _loaded(_values())
    before = {name: t.clone() for name, t in api.export(model).items()}
    weights = head_checkpoint(layout, _values(k=(1.0, 4.0, 2.0)))
    with pytest.raises(ScaleShapeError, match=r"layers\.0\.self_attn\.k_scale.*got shape \(3, 1, 1\)"):
        api.reload(model, weights)
    assert all(torch.equal(before[name], tensor) for name, tensor in api.export(model).items())


def test_a_per_tensor_config_rejects_a_per_head_checkpoint():
    spec = SPEC.with_(kv_scale_strategy="tensor")
    layout = CheckpointLayout(spec, producer="compressed-tensors", kv_scales={})
    with pytest.raises(ScaleShapeError, match=r"self_attn\.k_scale.*\(2, 1, 1\)"):
        api.first_load(api.build(spec), head_checkpoint(layout, _values()))


def test_reduce_q_to_kv_heads_groups_consecutive_query_heads():
    assert reduce_q_to_kv_heads(torch.tensor([1.0, 3.0, 2.0, 0.5, 4.0, 0.0]), 3).tolist() == [3.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="do not split"):
        reduce_q_to_kv_heads(torch.ones(5), 2)


def test_the_producer_table_writes_the_per_head_config():
    config = quantization_config("compressed-tensors", kv_scale_strategy="attn_head")
    assert config["kv_cache_scheme"]["strategy"] == "attn_head" and kv_scale_strategy_of(config) == "attn_head"
    assert kv_scale_strategy_of(quantization_config("compressed-tensors")) == "tensor"
