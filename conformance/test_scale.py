"""SCALE: the KV-cache scale parameter and its loader."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from loadspec.conformance.assertions import assert_equal, assert_raises_value_error
from loadspec.conformance.drivers import run_device
from loadspec.strategies.scales import scale_dtypes, scale_shapes, scale_values

pytestmark = pytest.mark.requires("primitives")


@pytest.mark.rule("SCALE-1")
def test_new_scale_is_a_0d_sentinel_without_grad(impl, device):
    param = impl.new_scale_parameter(device=device)
    assert_equal("scale.shape", tuple(param.shape), (), "SCALE-1")
    assert_equal("scale value", param.item(), -1.0, "SCALE-1")
    assert_equal("scale.requires_grad", param.requires_grad, False, "SCALE-1")
    assert_equal("scale.device.type", param.device.type, device, "SCALE-1")


@pytest.mark.rule("SCALE-2")
@pytest.mark.parametrize("default", [torch.bfloat16, torch.float16], ids=str)
def test_new_scale_is_float32_under_any_default_dtype(impl, default):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        param = impl.new_scale_parameter(device=run_device())
    finally:
        torch.set_default_dtype(previous)
    assert_equal(f"scale.dtype under default {default}", param.dtype, torch.float32, "SCALE-2")


@pytest.mark.rule("SCALE-3")
@given(data=st.data())
def test_any_one_element_tensor_loads(impl, ref, data):
    shape = data.draw(scale_shapes(valid=True), label="shape")
    dtype = data.draw(scale_dtypes(), label="dtype")
    value = data.draw(scale_values(allow_sentinel=False), label="value")
    weight = torch.full(shape, value, dtype=dtype)
    param, expected = impl.new_scale_parameter(device=run_device()), ref.new_scale_parameter(device=run_device())
    impl.load_scale(param, weight)
    ref.load_scale(expected, weight)
    assert_equal(f"scale after loading {tuple(shape)} {dtype} {value!r}", param.item(),
                 weight.reshape(()).to(param.dtype).item(), "SCALE-3")


@pytest.mark.rule("SCALE-4")
@given(data=st.data())
def test_non_scalar_rejected_naming_shape(impl, data):
    shape = data.draw(scale_shapes(valid=False), label="shape")
    param = impl.new_scale_parameter(device=run_device())
    assert_raises_value_error(f"loading shape {tuple(shape)}", lambda: impl.load_scale(param, torch.ones(shape)),
                              "SCALE-4", mentions=[str(tuple(shape))])
    assert_equal("scale after a rejected load", param.item(), -1.0, "SCALE-4")


@pytest.mark.rule("SCALE-5")
@pytest.mark.parametrize("shape", [(), (1,), (1, 1, 1)], ids=str)
def test_scale_load_counts_one_element(impl, shape):
    param = impl.new_scale_parameter(device=run_device())
    counted = impl.count_copies(impl.load_scale, param, torch.full(shape, 0.5))
    assert_equal(f"elements counted loading a {shape} scale", counted, 1, "SCALE-5")


@pytest.mark.rule("SCALE-6")
def test_scale_load_keeps_device_dtype_and_storage(impl, device):
    param = impl.new_scale_parameter(device=device)
    before = (param.data_ptr(), param.dtype, param.device)
    impl.load_scale(param, torch.tensor([0.25], dtype=torch.bfloat16))
    assert_equal("scale (data_ptr, dtype, device)", (param.data_ptr(), param.dtype, param.device), before, "SCALE-6")


@pytest.mark.rule("SCALE-7")
def test_instance_loader_shadows_class_loader(impl):
    param = impl.new_scale_parameter(device=run_device())
    calls = []
    param.weight_loader = lambda p, w, *rest: calls.append(w)
    impl.load_scale(param, torch.tensor(2.0))
    assert_equal("calls to the instance loader", len(calls), 1, "SCALE-7")
    assert_equal("scale value", param.item(), -1.0, "SCALE-7")
