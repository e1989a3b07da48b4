"""DTYPE: the model is built in the checkpoint's dtype; linear scales load as float32 whatever they are stored in."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from loadspec.conformance.assertions import assert_equal, assert_same_state, fail
from loadspec.conformance.drivers import built, draw_case, heavy
from loadspec.conformance.reproducers import Case, record_case
from loadspec.reference.vocabulary import torch_dtype
from loadspec.strategies.static import as_static

pytestmark = pytest.mark.requires("model", "reduced_precision_params")

REDUCED = ("bfloat16", "float16")
SCALE_DTYPES = st.sampled_from(["float32", "bfloat16", "float16"])  # CheckpointLayout.linear_scale_dtype


def _model_dtype_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state.items() if tensor.dtype == dtype}


@pytest.mark.rule("DTYPE-1")
@heavy()
@given(data=st.data())
def test_model_is_built_in_the_checkpoint_dtype(impl, ref, request, data, device):
    spec, layouts = draw_case(impl, request, data, "base", "reload", params_dtypes=REDUCED)
    dtype = torch_dtype(spec.params_dtype)
    model = built(impl, spec, layouts["base"].tensors(), device=device)
    for phase, layout in (("first load", layouts["base"]), ("reload", layouts["reload"])):
        if phase == "reload":
            impl.reload(model, layout.tensors())
        expected = _model_dtype_state(ref.export_kernel_state(built(ref, spec, layout.tensors(), device="cpu")), dtype)
        if not expected:
            fail(f"{spec.params_dtype} tensors of the reference after the {phase}", "none", "the embedding at least",
                 "DTYPE-1")
        state = impl.export_kernel_state(model)
        got = {name: state[name] for name in expected if name in state}
        assert_same_state(f"unquantized weights, norms and embeddings after the {phase} ({spec.params_dtype})", got,
                          expected, "DTYPE-1")
        given_by_name = dict(layout.tensors())
        for name, tensor in got.items():  # weights the checkpoint holds under the same name: bit for bit
            if name in given_by_name and given_by_name[name].shape == tensor.shape:
                assert_equal(f"{name} after the {phase} equals the checkpoint's",
                             torch.equal(tensor.cpu(), given_by_name[name]), True, "DTYPE-1")


@pytest.mark.rule("DTYPE-2")
@heavy()
@given(data=st.data())
def test_linear_scales_load_as_float32_whatever_they_are_stored_in(impl, ref, request, data, device):
    fp8 = tuple(q for q in ("fp8_per_tensor", "fp8_per_channel") if q in impl.capabilities)
    if not fp8:
        pytest.skip("needs capability fp8_per_tensor or fp8_per_channel (a checkpoint with FP8 linears)")
    spec, layouts = draw_case(impl, request, data, "base", params_dtypes=REDUCED, linear_quants=fp8,
                              allow_unquantized=False)
    layout = layouts["base"]  # every linear is FP8: no unquantized choice was offered
    if "static_input_scales" in impl.capabilities and data.draw(st.booleans(), label="static input scales"):
        spec = as_static(spec)
    stored = data.draw(SCALE_DTYPES, label="scale storage dtype")
    layout = replace(layout, spec=spec, linear_scale_dtype=stored)
    record_case(request, Case(request.node.nodeid, layouts={"base": layout}))  # the checkpoint as loaded
    weights = layout.tensors()
    state = impl.export_kernel_state(built(impl, spec, weights, device=device))
    oracle = ref.export_kernel_state(built(ref, spec, weights, device="cpu"))
    scales = {n: t for n, t in oracle.items() if n.endswith(("weight_scale", "input_scale"))}
    assert_same_state(f"linear scales stored as {stored} in a {spec.params_dtype} model",
                      {n: state[n] for n in scales if n in state}, scales, "DTYPE-2")
    given_by_name = dict(weights)
    for name in scales:  # unfused linears (the checkpoint's name is the engine's): exactly the stored value
        if name in given_by_name:
            assert_equal(f"{name} (stored {stored})", state[name].reshape(-1).tolist(),
                         given_by_name[name].float().reshape(-1).tolist(), "DTYPE-2")
