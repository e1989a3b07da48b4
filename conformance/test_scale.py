"""SCALE: the KV-cache scale parameter and its loader, on the primitive and through model loads."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from loadspec.conformance.assertions import (
    assert_equal,
    assert_raises_value_error,
    assert_unchanged,
    snapshot,
)
from loadspec.conformance.drivers import built, close_quietly, draw_case, graphs_for, must_producers, run_device
from loadspec.conformance.oracle import assert_same_as_reference
from loadspec.conformance.reproducers import Case, record_case
from loadspec.reference.vocabulary import SCALE_NAMES, torch_dtype
from loadspec.strategies import checkpoint_layouts, kv_scale_sets
from loadspec.strategies.capabilities import MODEL, REDUCED_PRECISION_PARAMS
from loadspec.strategies.scales import inexact_scale_values, scale_dtypes, scale_shapes, scale_values

pytestmark = pytest.mark.requires("primitives")

def model_sample():
    """Settings for this module's model-tier tests: every example delivers the case the rule speaks of (inexact
    values, a multi-element scale), so half of ``heavy()``'s examples (at least 3)."""
    return settings(max_examples=max(3, settings.default.max_examples // 6))


SCALE_PARAMETER = re.compile(rf"\.attn\.({'|'.join(SCALE_NAMES)})$")


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


@pytest.mark.rule("SCALE-2")
@pytest.mark.parametrize("default", [torch.bfloat16, torch.float16], ids=str)
@given(value=inexact_scale_values())
def test_scale_built_under_a_reduced_default_keeps_a_float32_value(impl, ref, default, value):
    weight = torch.tensor(value, dtype=torch.float32)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        param, oracle = impl.new_scale_parameter(device=run_device()), ref.new_scale_parameter(device=run_device())
    finally:
        torch.set_default_dtype(previous)
    impl.load_scale(param, weight)
    ref.load_scale(oracle, weight)
    assert_equal(f"scale built under default {default} after loading float32 {value!r}", param.item(), oracle.item(),
                 "SCALE-2")


def scale_state(adapter, model) -> dict[str, torch.Tensor]:
    """The exported KV-cache scale parameters (``<attn>.{q,k,v,prob}_scale``) of ``model``."""
    return {name: t for name, t in adapter.export_kernel_state(model).items() if SCALE_PARAMETER.search(name)}


@pytest.mark.rule("SCALE-2")
@pytest.mark.requires(MODEL, REDUCED_PRECISION_PARAMS)
@model_sample()
@given(data=st.data())
def test_reduced_precision_model_keeps_float32_scales_through_loads(impl, ref, request, data):
    spec = data.draw(graphs_for(impl, params_dtypes=("bfloat16", "float16"), allow_unquantized=False), label="graph")
    values = kv_scale_sets(required=("k",), values=inexact_scale_values(dtype=torch_dtype(spec.params_dtype)))
    layouts = {role: replace(data.draw(checkpoint_layouts(spec, producers=must_producers(spec), kv_scales=values),
                                       label=f"{role} checkpoint"), scale_dtype="float32")
               for role in ("base", "reload")}
    record_case(request, Case(request.node.nodeid, layouts=layouts))
    model, oracle = built(impl, spec, layouts["base"].tensors()), built(ref, spec, layouts["base"].tensors())
    assert_same_as_reference(f"{spec.params_dtype} model's scales after a first load of float32 scales",
                             scale_state(impl, model), scale_state(ref, oracle), "SCALE-2", request=request)
    impl.reload(model, layouts["reload"].tensors())
    ref.reload(oracle, layouts["reload"].tensors())
    assert_same_as_reference(f"{spec.params_dtype} model's scales after a reload of float32 scales",
                             scale_state(impl, model), scale_state(ref, oracle), "SCALE-2", request=request)


@pytest.mark.rule("SCALE-3")
@given(data=st.data())
def test_any_one_element_tensor_loads(impl, ref, data):
    shape = data.draw(scale_shapes(valid=True), label="shape")
    dtype = data.draw(scale_dtypes(), label="dtype")
    value = data.draw(scale_values(allow_sentinel=False), label="value")
    weight = torch.full(shape, value, dtype=dtype)
    param, oracle = impl.new_scale_parameter(device=run_device()), ref.new_scale_parameter(device=run_device())
    created = param.dtype
    impl.load_scale(param, weight)
    ref.load_scale(oracle, weight)
    what = f"scale after loading {tuple(shape)} {dtype} {value!r}"
    assert_equal(f"{what}: (shape, dtype)", (tuple(param.shape), param.dtype), ((), created), "SCALE-3")
    expected = oracle.item() if created == oracle.dtype else weight.reshape(()).to(created).item()
    assert_equal(what, param.item(), expected, "SCALE-3")


@pytest.mark.rule("SCALE-4")
@given(data=st.data())
def test_non_scalar_rejected_naming_shape(impl, data):
    shape = data.draw(scale_shapes(valid=False), label="shape")
    param = impl.new_scale_parameter(device=run_device())
    assert_raises_value_error(f"loading shape {tuple(shape)}", lambda: impl.load_scale(param, torch.ones(shape)),
                              "SCALE-4", mentions=[str(tuple(shape))])
    assert_equal("scale after a rejected load", param.item(), -1.0, "SCALE-4")


def attention_tensors(adapter, model, prefix: str) -> dict[str, object]:
    """Snapshot of the live tensors and host mirrors of the attention layer at ``prefix``."""
    tensors = {n: t for n, t in adapter.kernel_tensors(model).items() if n.startswith(prefix)}
    return snapshot(tensors, {n: v for n, v in adapter.host_mirrors(model).items() if n.startswith(prefix)})


@pytest.mark.rule("SCALE-4")
@pytest.mark.requires(MODEL)
@model_sample()
@given(data=st.data())
def test_multi_element_checkpoint_scale_rejected_by_every_load_path(impl, request, data):
    spec, layouts = draw_case(impl, request, data, "base", "bad", allow_unquantized=False)
    assume(spec.kv_scale_strategy == "tensor")  # a per-head scale parameter takes (H, 1, 1): the HEADS rules
    bad = layouts["bad"]
    name = data.draw(st.sampled_from(bad.kv_scale_names), label="scale given more than one element")
    shape = data.draw(scale_shapes(valid=False), label="its shape")
    weights = [(n, torch.full(shape, 0.5, dtype=t.dtype) if n == name else t) for n, t in bad.tensors()]
    prefix = spec.attention_prefix(int(re.search(r"\.layers\.(\d+)\.", name).group(1)))
    what = f"{name} of shape {tuple(shape)}"

    fresh = impl.build_model(spec, device=run_device())
    before = attention_tensors(impl, fresh, prefix)
    assert_raises_value_error(f"first load with {what}", lambda: impl.first_load(fresh, weights), "SCALE-4",
                              mentions=[str(tuple(shape))])
    assert_unchanged(f"{prefix} after a rejected first load", before, attention_tensors(impl, fresh, prefix),
                     "SCALE-4")

    # A reload or session rejects it too; what a rejected reload leaves is LOAD-6's (a SHOULD: vLLM streams).
    model = built(impl, spec, layouts["base"].tensors())
    assert_raises_value_error(f"reload with {what}", lambda: impl.reload(model, weights), "SCALE-4",
                              mentions=[str(tuple(shape))])
    if "reload_sessions" not in impl.capabilities:
        return
    model = built(impl, spec, layouts["base"].tensors())
    session = impl.open_reload(model)
    try:
        assert_raises_value_error(f"reload session load with {what}", lambda: session.load(weights), "SCALE-4",
                                  mentions=[str(tuple(shape))])
    finally:
        close_quietly(session)


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
