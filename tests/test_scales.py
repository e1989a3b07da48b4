"""SCALE: the KV-cache scale parameter and its loader."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from loadspec.reference.vocabulary import SENTINEL
from loadspec.reference.copy_counter import CopyCounter
from loadspec.reference.errors import ScaleShapeError
from loadspec.reference.scales import KVCacheScaleParameter

ONE_ELEMENT_SHAPES = [(), (1,), (1, 1), (1, 1, 1)]
BAD_SHAPES = [(0,), (2,), (3, 1, 1), (1, 2)]
FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.mark.rule("SCALE-1")
def test_new_scale_is_0d_sentinel_without_grad(device):
    param = KVCacheScaleParameter(device=device)
    assert param.shape == () and param.item() == SENTINEL and param.requires_grad is False
    assert param.device.type == device


@pytest.mark.rule("SCALE-2")
@pytest.mark.parametrize("default", [torch.bfloat16, torch.float16, torch.float64])
def test_new_scale_is_float32_under_any_default_dtype(default):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        assert KVCacheScaleParameter().dtype == torch.float32
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.rule("SCALE-3", "SCALE-5", "SCALE-6")
@given(shape=st.sampled_from(ONE_ELEMENT_SHAPES), dtype=st.sampled_from(FLOAT_DTYPES),
       value=st.floats(min_value=1e-4, max_value=1e4))
def test_any_one_element_tensor_loads_once_through_copy(shape, dtype, value):
    param = KVCacheScaleParameter()
    pointer = param.data_ptr()
    weight = torch.full(shape, value, dtype=dtype)
    with CopyCounter() as counter:
        KVCacheScaleParameter.weight_loader(param, weight)
    assert param.item() == weight.float().item()
    assert counter.copied == 1, f"copied={counter.copied}, but should be 1 [SCALE-5]"
    assert (param.data_ptr(), param.dtype, param.shape) == (pointer, torch.float32, torch.Size([]))


@pytest.mark.rule("SCALE-6")
def test_scale_load_keeps_device(device):
    param = KVCacheScaleParameter(device=device)
    KVCacheScaleParameter.weight_loader(param, torch.tensor([0.5]))
    assert param.device.type == device and param.item() == 0.5


@pytest.mark.rule("SCALE-4")
@pytest.mark.parametrize("shape", BAD_SHAPES, ids=str)
def test_non_scalar_rejected_naming_shape_and_param_kept(shape):
    param = KVCacheScaleParameter()
    param.loadspec_name = "model.layers.0.self_attn.attn.k_scale"
    with pytest.raises(ScaleShapeError) as info:
        KVCacheScaleParameter.weight_loader(param, torch.ones(shape))
    assert str(tuple(shape)) in str(info.value) and "attn.k_scale" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert param.item() == SENTINEL


@pytest.mark.rule("SCALE-7")
def test_instance_loader_shadows_class_loader():
    param = KVCacheScaleParameter()
    calls = []
    param.weight_loader = lambda p, w: calls.append(w)
    param.weight_loader(param, torch.tensor(2.0))
    assert len(calls) == 1 and param.item() == SENTINEL
    assert KVCacheScaleParameter.weight_loader is not param.weight_loader
