"""KVPROC: resolving KV-cache scale sentinels after loading."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from model_state import assert_unchanged, snapshot

from loadspec.reference.vocabulary import PER_TOKEN_HEAD_KV_DTYPES, SCALE_NAMES, SENTINEL
from loadspec.reference.errors import ScaleValueError
from loadspec.reference.kv_cache import MissingKVScalesWarning, output_scales
from loadspec.reference.layers.attention import Attention
from loadspec.reference.quant_config import QuantConfig
from loadspec.reference.scales import KVCacheScaleParameter

QUANTIZED = ["fp8", "fp8_e4m3", "fp8_e5m2"]


def attention(kv_cache_dtype="fp8_e4m3", device=None, quant_method="fp8"):
    config = QuantConfig(quant_method) if quant_method else None
    if kv_cache_dtype == "fp8_e5m2" and config is not None:
        config = None  # e5m2 with a loading method is rejected [KVPROC-10]; see its own test
        layer = Attention(num_heads=2, num_kv_heads=1, head_dim=4, kv_cache_dtype=kv_cache_dtype, device=device)
        layer.quant_method = QuantConfig("fp8").kv_cache_method(kv_cache_dtype)
        layer.quant_method.create_weights(layer, device=device)
        return layer
    return Attention(num_heads=2, num_kv_heads=1, head_dim=4, kv_cache_dtype=kv_cache_dtype,
                     quant_config=config, device=device)


def load_and_process(layer, **values):
    for name, value in values.items():
        KVCacheScaleParameter.weight_loader(getattr(layer, f"{name}_scale"), torch.tensor(value))
    layer.quant_method.process_weights_after_loading(layer)
    return output_scales(layer)


def assert_mirrors_match(layer):
    __tracebackhide__ = True
    for name in SCALE_NAMES:
        device_value = float(getattr(layer, f"_{name}"))
        mirror = getattr(layer, f"_{name}_float")
        assert mirror == device_value, f"_{name}_float={mirror}, but should be {device_value} [KVPROC-11]"
    for name in ("k_scale", "v_scale"):
        cpu = float(getattr(layer, f"_{name}_cpu"))
        assert cpu == float(getattr(layer, f"_{name}")), f"_{name}_cpu={cpu} [KVPROC-11]"


@pytest.mark.rule("KVPROC-1")
def test_create_weights_gives_four_fresh_sentinels():
    layer = attention()
    params = dict(layer.named_parameters())
    assert sorted(params) == sorted(SCALE_NAMES)
    assert all(isinstance(p, KVCacheScaleParameter) and p.item() == SENTINEL for p in params.values())
    layer.k_scale.data.fill_(3.0)
    old = layer.k_scale
    layer.quant_method.create_weights(layer)
    assert layer.k_scale is not old and layer.k_scale.item() == SENTINEL


TRUTH_TABLE = [  # (loaded k, loaded v) -> (k out, v out)   [KVPROC-2, -4, -5]
    pytest.param({"k": 0.5, "v": 0.25}, (0.5, 0.25), marks=pytest.mark.rule("KVPROC-2"), id="both"),
    pytest.param({"k": 0.5}, (0.5, 0.5), marks=pytest.mark.rule("KVPROC-4"), id="k-only"),
    pytest.param({"v": 0.25}, (0.25, 0.25), marks=pytest.mark.rule("KVPROC-5"), id="v-only"),
]


@pytest.mark.parametrize("dtype", QUANTIZED)
@pytest.mark.parametrize("loaded, expected", TRUTH_TABLE)
def test_truth_table(dtype, loaded, expected, device):
    layer = attention(dtype, device=device)
    out = load_and_process(layer, **loaded)
    assert (out["k_scale"], out["v_scale"]) == expected
    assert_mirrors_match(layer)


@pytest.mark.rule("KVPROC-3")
@pytest.mark.parametrize("dtype", QUANTIZED)
def test_none_loaded_gives_one_with_a_warning_unless_e5m2(dtype):
    layer = attention(dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = load_and_process(layer)
    assert out == {"q_scale": 1.0, "k_scale": 1.0, "v_scale": 1.0, "prob_scale": 1.0}
    assert_mirrors_match(layer)
    warned = [w for w in caught if issubclass(w.category, MissingKVScalesWarning)]
    assert len(warned) == (0 if "e5m2" in dtype else 1)


@pytest.mark.rule("KVPROC-6")
@pytest.mark.parametrize("dtype", ["auto", "bfloat16", *QUANTIZED])
def test_q_and_prob_loaded_or_one(dtype):
    loaded = attention(dtype)
    out = load_and_process(loaded, q=0.125, prob=0.0625, k=0.5, v=0.5)
    assert (out["q_scale"], out["prob_scale"]) == (0.125, 0.0625)
    missing = attention(dtype)
    out = load_and_process(missing, k=0.5, v=0.5)
    assert (out["q_scale"], out["prob_scale"]) == (1.0, 1.0)
    assert_mirrors_match(loaded)


BAD_VALUES = [math.nan, math.inf, -math.inf, 0.0, -0.5, -2.0]


@pytest.mark.rule("KVPROC-7", "KVPROC-11")
@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
@pytest.mark.parametrize("scale", ["k", "v", "q", "prob"])
def test_bad_values_rejected_and_layer_unchanged(scale, value):
    layer = attention("fp8_e4m3")
    good = {"k": 0.5, "v": 0.25, "q": 1.0, "prob": 1.0}
    good[scale] = value
    for name, v in good.items():
        KVCacheScaleParameter.weight_loader(getattr(layer, f"{name}_scale"), torch.tensor(v))
    before = snapshot(layer)
    with pytest.raises(ScaleValueError) as info:
        layer.quant_method.process_weights_after_loading(layer)
    assert f"{scale}_scale" in str(info.value) and "finite and positive" in str(info.value)
    assert_unchanged(before, snapshot(layer))


@pytest.mark.rule("KVPROC-7")
@pytest.mark.filterwarnings("ignore::loadspec.reference.kv_cache.MissingKVScalesWarning")
@given(value=st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([SENTINEL, 0.0, -0.0]))
def test_only_finite_positive_or_sentinel_accepted(value):
    layer = attention("fp8_e4m3")
    KVCacheScaleParameter.weight_loader(layer.k_scale, torch.tensor(value, dtype=torch.float64))
    stored = layer.k_scale.item()
    accepted = stored == SENTINEL or (math.isfinite(stored) and stored > 0)
    if accepted:
        out = layer.quant_method.resolve(layer)
        assert out["k_scale"] == (1.0 if stored == SENTINEL else stored)
    else:
        with pytest.raises(ScaleValueError):
            layer.quant_method.resolve(layer)


@pytest.mark.rule("KVPROC-8")
@pytest.mark.parametrize("dtype", PER_TOKEN_HEAD_KV_DTYPES)
def test_per_token_head_dtypes_use_one(dtype):
    layer = attention(dtype)
    out = load_and_process(layer, k=0.5, v=0.25)
    assert (out["k_scale"], out["v_scale"]) == (1.0, 1.0)
    assert_mirrors_match(layer)


@pytest.mark.rule("KVPROC-9")
@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_unquantized_dtypes_leave_k_and_v(dtype):
    layer = attention(dtype)
    layer._k_scale.fill_(0.75)
    layer._k_scale_float = 0.75
    layer._k_scale_cpu.fill_(0.75)
    out = load_and_process(layer, k=0.5, v=0.25)
    assert (out["k_scale"], out["v_scale"]) == (0.75, 1.0)


@pytest.mark.rule("KVPROC-10")
def test_e5m2_with_loading_method_rejected_at_construction():
    with pytest.raises(ValueError, match="fp8_e5m2"):
        Attention(num_heads=2, num_kv_heads=1, head_dim=4, kv_cache_dtype="fp8_e5m2", quant_config=QuantConfig("fp8"))
    Attention(num_heads=2, num_kv_heads=1, head_dim=4, kv_cache_dtype="fp8_e5m2", quant_config=None)


@pytest.mark.rule("KVPROC-12")
def test_processing_deletes_params_and_twice_equals_once():
    layer = attention()
    load_and_process(layer, k=0.5, v=0.25, q=0.125)
    assert not any(hasattr(layer, name) for name in SCALE_NAMES)
    once = snapshot(layer)
    layer.quant_method.process_weights_after_loading(layer)
    assert_unchanged(once, snapshot(layer))


@pytest.mark.rule("KVPROC-13", "KVPROC-11")
def test_device_scales_written_in_place(device):
    layer = attention(device=device)
    pointers = {name: getattr(layer, f"_{name}").data_ptr() for name in SCALE_NAMES}
    cpu_objects = (layer._k_scale_cpu, layer._v_scale_cpu)
    load_and_process(layer, k=0.5, v=0.25, q=0.125, prob=0.0625)
    assert {name: getattr(layer, f"_{name}").data_ptr() for name in SCALE_NAMES} == pointers
    assert (layer._k_scale_cpu, layer._v_scale_cpu) == cpu_objects
    assert layer._prob_scale_float == 0.0625
    assert_mirrors_match(layer)
