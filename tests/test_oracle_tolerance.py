"""The oracle's FP8-step tolerance (LOAD-17/RELOAD-13 allow re-quantized fused shards one e4m3 step; LOAD-20 none)."""

from __future__ import annotations

import pytest
import torch

from loadspec.conformance.oracle import REQUANTIZED_SHARDS, Tolerance, kernel_state_diffs

FP8 = torch.float8_e4m3fn
NAME = "model.layers.0.self_attn.qkv_proj.weight"


def fp8_bits(*bits: int) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.uint8).view(FP8)


@pytest.mark.parametrize(("got", "expected", "allowed"), [
    ((0x38, 0x40), (0x38, 0x40), True),     # equal
    ((0x39, 0x40), (0x38, 0x40), True),     # 1.125 vs 1.0: one step
    ((0x3A, 0x40), (0x38, 0x40), False),    # two steps
    ((0x01,), (0x81,), False),              # smallest subnormal vs its negative: two steps through zero
    ((0x01,), (0x80,), True),               # smallest subnormal vs -0: one step
    ((0x00,), (0x80,), True),               # +0 vs -0 share a rank
    ((0x7F,), (0x7E,), False),              # NaN vs 448: NaN only where the reference has NaN
    ((0xFF,), (0x7F,), True),               # NaN vs NaN (either sign)
])
def test_fp8_steps_bound_the_distance_in_representable_values(got, expected, allowed):
    assert REQUANTIZED_SHARDS.allows(fp8_bits(*got), fp8_bits(*expected)) is allowed


def test_tolerance_applies_only_to_its_pattern_and_strict_check_sees_one_step():
    got, expected = {NAME: fp8_bits(0x39), "o_proj.weight": fp8_bits(0x39)}, {NAME: fp8_bits(0x38),
                                                                           "o_proj.weight": fp8_bits(0x38)}
    assert [d.name for d in kernel_state_diffs(got, expected, tolerances=(REQUANTIZED_SHARDS,))] == ["o_proj.weight"]
    assert [d.name for d in kernel_state_diffs(got, expected)] == sorted([NAME, "o_proj.weight"])


def test_atol_tolerance_for_float_tensors():
    tolerance = Tolerance(r"norm", atol=1e-3, rule="LOAD-17")
    assert tolerance.allows(torch.tensor([1.0005]), torch.tensor([1.0]))
    assert not tolerance.allows(torch.tensor([1.01]), torch.tensor([1.0]))
