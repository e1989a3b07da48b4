"""``loadspec.strategies.requantize``: shard scales on which any re-quantization less precise than float32 differs
from the exact one [LOAD-20]. Checked on the arithmetic itself, on the drawn layouts, and on the reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from loadspec.reference import api
from loadspec.reference.spec import DEFAULT_SPEC, LayerSpec
from loadspec.strategies.layouts import CheckpointLayout, checkpoint_layouts
from loadspec.strategies.requantize import fused_per_tensor_groups, near_midpoint_scale, near_midpoint_scales
from loadspec.strategies.synthetic import hf_linears

E4M3 = torch.float8_e4m3fn


def exact(x: torch.Tensor, scale: float, largest: float) -> torch.Tensor:
    return (x.float() * scale / largest).to(E4M3)


def through(dtype: torch.dtype, x: torch.Tensor, scale: float, largest: float) -> torch.Tensor:
    """The dequantized value rounded to ``dtype`` first (vLLM's ``per_tensor_dequantize`` in float16)."""
    return ((x.to(dtype) * torch.tensor(scale)).float() / largest).to(E4M3)


POWERS_OF_TWO = torch.tensor([s * 2.0 ** a for a in range(-3, 9) for s in (1, -1)]).to(E4M3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("exponent", [-6, 0, 2])
@pytest.mark.parametrize("significand", [0, 2, 4, 6])
@pytest.mark.parametrize("shift", [1, 2, 3])
def test_every_power_of_two_byte_rounds_differently_in_lower_precision(dtype, exponent, significand, shift):
    largest = 2.0 ** exponent
    scale = near_midpoint_scale(largest, significand, shift)
    assert torch.tensor(scale, dtype=torch.float32).item() == scale  # exact in float32
    assert scale < largest
    good, bad = exact(POWERS_OF_TWO, scale, largest), through(dtype, POWERS_OF_TWO, scale, largest)
    assert (good.float() != bad.float()).all(), (good, bad)
    # the exact result is the upper neighbour of the midpoint: one e4m3 step above the tie-to-even result
    assert (good.float().abs() > bad.float().abs()).all()


@pytest.mark.parametrize("args", [(3.0, 0, 1), (1.0, 1, 1), (1.0, 0, 0), (0.75, 2, 1)])
def test_near_midpoint_scale_rejects_bad_arguments(args):
    with pytest.raises(InvalidArgument, match="power of two"):
        near_midpoint_scale(*args)


def test_groups_are_the_fused_per_tensor_linears_only():
    layer = LayerSpec(qkv_quant="fp8_per_tensor", o_quant="fp8_per_tensor", gate_up_quant="fp8_per_channel",
                      down_quant="fp8_per_tensor")
    spec = DEFAULT_SPEC.with_(layers=(layer,), quant_method="compressed-tensors")
    groups = fused_per_tensor_groups(CheckpointLayout(spec=spec, producer="compressed-tensors"))
    names = [name.rsplit(".", 1)[-1] for name in groups[0]]
    assert len(groups) == 1 and names == ["q_proj", "k_proj", "v_proj"]


def test_a_spec_with_no_fused_per_tensor_linear_is_an_invalid_argument():
    spec = DEFAULT_SPEC.with_(layers=(LayerSpec(qkv_quant="fp8_per_channel", gate_up_quant="none"),),
                              quant_method="compressed-tensors")
    with pytest.raises(InvalidArgument, match="no fused per-tensor FP8 linear"):
        near_midpoint_scales(CheckpointLayout(spec=spec, producer="compressed-tensors")).example()
    with pytest.raises(InvalidArgument, match="should be a CheckpointLayout"):
        near_midpoint_scales(spec).example()


PER_TENSOR = DEFAULT_SPEC.with_(layers=(LayerSpec(qkv_quant="fp8_per_tensor", o_quant="fp8_per_tensor",
                                                  gate_up_quant="fp8_per_tensor", down_quant="fp8_per_tensor"),) * 2,
                                quant_method="compressed-tensors")


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_drawn_layouts_replace_each_shard_scale_below_one_largest(data):
    base = data.draw(checkpoint_layouts(PER_TENSOR), label="layout")
    layout = data.draw(near_midpoint_scales(base), label="hard layout")
    tensors = dict(layout.tensors())
    for group in fused_per_tensor_groups(layout):
        values = [float(tensors[f"{name}.weight_scale"].reshape(-1)[0]) for name in group]
        largest = max(values)
        assert values.count(largest) == 1 and math.frexp(largest)[0] == 0.5  # one shard keeps 2^e
        hard = {near_midpoint_scale(largest, i, k) for i in (0, 2, 4, 6) for k in (1, 2, 3)}
        assert all(v in hard for v in values if v != largest), (values, largest)
    # the replaced scales survive a reproducer's JSON round trip
    assert dict(CheckpointLayout.from_json(layout.to_json()).tensors()).keys() == tensors.keys()
    again = dict(CheckpointLayout.from_json(layout.to_json()).tensors())
    assert all(torch.equal(again[n].float(), tensors[n].float()) for n in tensors if n.endswith("weight_scale"))


def test_the_reference_rounds_the_hard_bytes_up_as_float32_does():
    layout = near_midpoint_scales(CheckpointLayout(spec=PER_TENSOR, producer="compressed-tensors")).example()
    tensors = dict(layout.tensors())
    model = api.build(PER_TENSOR)
    api.first_load(model, list(tensors.items()))
    prefix = PER_TENSOR.layer_prefix(0) + PER_TENSOR.container
    names = [n for n in hf_linears(PER_TENSOR, 0) if n.startswith(prefix) and n.rsplit(".", 1)[-1][0] in "qkv"]
    scales = [float(tensors[f"{n}.weight_scale"].reshape(-1)[0]) for n in names]
    largest = max(scales)
    kernel = model.get_submodule(prefix + ".qkv_proj").weight
    offset = 0
    for name, scale in zip(names, scales, strict=True):
        rows = tensors[f"{name}.weight"]
        loaded = kernel[offset:offset + rows.shape[0]]
        offset += rows.shape[0]
        assert torch.equal(loaded.float(), exact(rows, scale, largest).float())
        if scale != largest:
            assert not torch.equal(loaded.float(), through(torch.float16, rows, scale, largest).float())
