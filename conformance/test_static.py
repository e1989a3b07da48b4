"""STATIC: static activation scales (``input_scale``) of FP8 linears, decided from the quantization config."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from loadspec.conformance.assertions import assert_equal, assert_raises_value_error, assert_unchanged, fail, snapshot
from loadspec.conformance.drivers import built, graphs_for, heavy, layouts_for, run_device
from loadspec.conformance.reproducers import Case, record_case
from loadspec.reference.vocabulary import FORMAT_ACTIVATION_SCHEMES
from loadspec.strategies.static import as_static, input_scale_names, static_checkpoint

pytestmark = pytest.mark.requires("model", "static_input_scales")

FP8 = ("fp8_per_tensor", "fp8_per_channel")
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
"""Engine linear -> the checkpoint projections it fuses (MLA's projections are not fused)."""


def _has_fp8(spec) -> bool:
    return any(q != "none" for layer in spec.layers for q in layer.linear_quants().values())


def _static_case(impl, request, data, *roles):
    """A static-activation graph and one MUST layout per role, recorded as the reproducer."""
    fp8 = tuple(q for q in FP8 if q in impl.capabilities)
    if not fp8:
        pytest.skip("needs capability fp8_per_tensor or fp8_per_channel (a checkpoint with FP8 linears)")
    graph = data.draw(graphs_for(impl, linear_quants=fp8, allow_unquantized=False).filter(_has_fp8), label="graph")
    spec = as_static(graph)
    layouts = {role: data.draw(layouts_for(spec), label=f"{role} checkpoint") for role in roles}
    record_case(request, Case(request.node.nodeid, layouts=layouts))
    return spec, layouts


def _input_scales(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state.items() if name.endswith(".input_scale")}


def _engine_linear(checkpoint_name: str, spec) -> str:
    """The engine linear a checkpoint projection's ``input_scale`` loads into (MHA ``q_proj`` -> ``qkv_proj``)."""
    module, projection, _ = checkpoint_name.rsplit(".", 2)
    fused = next((engine for engine, parts in FUSED.items() if projection in parts
                  and (engine != "qkv_proj" or spec.attention == "mha")), projection)
    return f"{module}.{fused}.input_scale"


def _expected_input_scales(weights, spec) -> dict[str, float]:
    """Engine ``input_scale`` name -> the largest of its shards' checkpoint values, as float32 [STATIC-2]."""
    out: dict[str, float] = {}
    for name, tensor in weights:
        if name.endswith(".input_scale"):
            engine = _engine_linear(name, spec)
            value = float(tensor.detach().float().reshape(()))
            out[engine] = max(out.get(engine, value), value)
    return out


@pytest.mark.rule("STATIC-1")
@heavy()
@given(data=st.data())
def test_static_config_loads_every_input_scale(impl, ref, request, data, device):
    spec, layouts = _static_case(impl, request, data, "base")
    weights = static_checkpoint(layouts["base"])
    got = _input_scales(impl.export_kernel_state(built(impl, spec, weights, device=device)))
    expected = _input_scales(ref.export_kernel_state(built(ref, spec, weights, device="cpu")))
    assert_equal("linears with an input_scale after a static first load", sorted(got), sorted(expected), "STATIC-1")
    assert_equal("linears with an input_scale", sorted(got),
                 sorted({_engine_linear(n, spec) for n in input_scale_names(spec)}), "STATIC-1")
    if FORMAT_ACTIVATION_SCHEMES.get(spec.quant_method or "") is None:  # the same format, dynamic
        dynamic = spec.with_(activation_scheme="dynamic")
        layout = replace(layouts["base"], spec=dynamic)
        state = impl.export_kernel_state(built(impl, dynamic, layout.tensors(), device=device))
        assert_equal("input_scale tensors under a dynamic config", sorted(_input_scales(state)), [], "STATIC-1")


@pytest.mark.rule("STATIC-2")
@heavy()
@given(data=st.data())
def test_fused_input_scales_become_their_max(impl, request, data, device):
    spec, layouts = _static_case(impl, request, data, "base", "reload")
    base, new = static_checkpoint(layouts["base"]), static_checkpoint(layouts["reload"])
    model = built(impl, spec, base, device=device)
    for phase, weights in (("first load", base), ("reload", new)):
        if phase == "reload":
            impl.reload(model, new)
        got = _input_scales(impl.export_kernel_state(model))
        for name, value in _expected_input_scales(weights, spec).items():
            if name not in got:
                fail(f"{name} after the {phase}", "absent", "a 0-d float32 input_scale", "STATIC-2")
            tensor = got[name]
            assert_equal(f"{name} shape, dtype after the {phase}", (tuple(tensor.shape), tensor.dtype),
                         ((), torch.float32), "STATIC-2")
            assert_equal(f"{name} after the {phase}", float(tensor), value, "STATIC-2")


@pytest.mark.rule("STATIC-3")
@heavy()
@given(data=st.data())
def test_missing_input_scale_rejected_on_first_load(impl, request, data):
    spec, layouts = _static_case(impl, request, data, "base")
    dropped = data.draw(st.sampled_from(input_scale_names(spec)), label="input_scale left out")
    layout = replace(layouts["base"], missing=(*layouts["base"].missing, dropped))
    record_case(request, Case(request.node.nodeid, layouts={"base": layout}))  # the checkpoint it loads
    weights = static_checkpoint(layout)
    model = impl.build_model(spec, device=run_device())
    before = snapshot(impl.kernel_tensors(model))
    engine = _engine_linear(dropped, spec)
    assert_raises_value_error(f"first load without {dropped}", lambda: impl.first_load(model, weights), "STATIC-3",
                              mentions=(engine,))
    assert_unchanged(f"model after the rejected load without {dropped}", before, snapshot(impl.kernel_tensors(model)),
                     "STATIC-3")
