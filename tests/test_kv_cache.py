"""KVPROC, reference internals: warnings, error classes, buffers and mirrors, and the oracle's own values.

``conformance/test_kvproc.py`` checks KVPROC-1..13 through the adapter; for KVPROC-2, -4, -5 and
-6 it compares the implementation's outputs with the reference's, which on the reference is a
comparison with itself. So the truth table is pinned here (``test_oracle_*``), with what the
suite cannot see: ``MissingKVScalesWarning`` (KVPROC-3), ``ScaleValueError``, ``resolve``, the
fp8_e5m2 method without a loading config, prefilled buffers, and the CPU mirror tensors.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from loadspec.conformance.assertions import assert_unchanged
from loadspec.reference.errors import ScaleValueError
from loadspec.reference.kv_cache import MissingKVScalesWarning, output_scales
from loadspec.reference.layers.attention import Attention
from loadspec.reference.quant_config import QuantConfig
from loadspec.reference.scales import KVCacheScaleParameter
from loadspec.reference.vocabulary import PER_TOKEN_HEAD_KV_DTYPES, SCALE_NAMES, SENTINEL

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


TRUTH_TABLE = [  # (loaded k, loaded v) -> (k out, v out)   [KVPROC-2, -4, -5]
    pytest.param({"k": 0.5, "v": 0.25}, (0.5, 0.25), id="both"),
    pytest.param({"k": 0.5}, (0.5, 0.5), id="k-only"),
    pytest.param({"v": 0.25}, (0.25, 0.25), id="v-only"),
]


@pytest.mark.parametrize("dtype", QUANTIZED)
@pytest.mark.parametrize("loaded, expected", TRUTH_TABLE)
def test_oracle_truth_table_with_mirrors(dtype, loaded, expected, device):
    layer = attention(dtype, device=device)
    out = load_and_process(layer, **loaded)
    assert (out["k_scale"], out["v_scale"]) == expected
    assert_mirrors_match(layer)


@pytest.mark.parametrize("dtype", QUANTIZED)
def test_none_loaded_warns_missing_kv_scales_unless_e5m2(dtype):
    layer = attention(dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = load_and_process(layer)
    assert out == {"q_scale": 1.0, "k_scale": 1.0, "v_scale": 1.0, "prob_scale": 1.0}
    assert_mirrors_match(layer)
    warned = [w for w in caught if issubclass(w.category, MissingKVScalesWarning)]
    assert len(warned) == (0 if "e5m2" in dtype else 1)


@pytest.mark.parametrize("dtype", ["auto", "bfloat16", *QUANTIZED])
def test_oracle_q_and_prob_values_with_mirrors(dtype):
    loaded = attention(dtype)
    out = load_and_process(loaded, q=0.125, prob=0.0625, k=0.5, v=0.5)
    assert (out["q_scale"], out["prob_scale"]) == (0.125, 0.0625)
    missing = attention(dtype)
    out = load_and_process(missing, k=0.5, v=0.5)
    assert (out["q_scale"], out["prob_scale"]) == (1.0, 1.0)
    assert_mirrors_match(loaded)


BAD_VALUES = [math.nan, math.inf, -math.inf, 0.0, -0.5, -2.0]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
@pytest.mark.parametrize("scale", ["k", "v", "q", "prob"])
def test_bad_value_raises_scale_value_error_and_changes_nothing(model_state, scale, value):
    layer = attention("fp8_e4m3")
    good = {"k": 0.5, "v": 0.25, "q": 1.0, "prob": 1.0}
    good[scale] = value
    for name, v in good.items():
        KVCacheScaleParameter.weight_loader(getattr(layer, f"{name}_scale"), torch.tensor(v))
    before = model_state(layer)
    with pytest.raises(ScaleValueError) as info:
        layer.quant_method.process_weights_after_loading(layer)
    assert f"{scale}_scale" in str(info.value) and "finite and positive" in str(info.value)
    assert_unchanged(f"layer after rejecting {scale}_scale={value!r}", before, model_state(layer), "KVPROC-7")


@pytest.mark.filterwarnings("ignore::loadspec.reference.kv_cache.MissingKVScalesWarning")
@given(value=st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([SENTINEL, 0.0, -0.0]))
def test_resolve_accepts_only_finite_positive_or_sentinel(value):
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


@pytest.mark.parametrize("dtype", PER_TOKEN_HEAD_KV_DTYPES)
def test_per_token_head_dtypes_keep_the_mirrors_equal(dtype):
    layer = attention(dtype)
    out = load_and_process(layer, k=0.5, v=0.25)
    assert (out["k_scale"], out["v_scale"]) == (1.0, 1.0)
    assert_mirrors_match(layer)


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_unquantized_dtypes_keep_a_prefilled_k_scale_buffer(dtype):
    layer = attention(dtype)
    layer._k_scale.fill_(0.75)
    layer._k_scale_float = 0.75
    layer._k_scale_cpu.fill_(0.75)
    out = load_and_process(layer, k=0.5, v=0.25)
    assert (out["k_scale"], out["v_scale"]) == (0.75, 1.0)


def test_cpu_mirror_tensors_are_updated_in_place(device):
    layer = attention(device=device)
    cpu_mirrors = [(id(t), t.data_ptr(), t.device.type) for t in (layer._k_scale_cpu, layer._v_scale_cpu)]
    load_and_process(layer, k=0.5, v=0.25, q=0.125, prob=0.0625)
    assert [(id(t), t.data_ptr(), t.device.type) for t in (layer._k_scale_cpu, layer._v_scale_cpu)] == cpu_mirrors
    assert layer._prob_scale_float == 0.0625
    assert_mirrors_match(layer)
