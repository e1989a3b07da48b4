"""The oracle comparison's diff and messages (conformance/oracle.py) [LOAD-17, RELOAD-13, LOAD-18, RELOAD-14]."""

from __future__ import annotations

import math

import pytest
import torch

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.conformance.oracle import (
    Tolerance,
    Twin,
    assert_same_as_reference,
    kernel_state_diffs,
    mirror_differences,
)
from loadspec.reference.spec import DEFAULT_SPEC
from loadspec.strategies.layouts import CheckpointLayout

pytestmark = pytest.mark.filterwarnings("ignore::loadspec.reference.kv_cache.MissingKVScalesWarning")


def fp8(*values: float) -> torch.Tensor:
    return torch.tensor(values).to(torch.float8_e4m3fn)


def test_identical_states_have_no_diff_and_nan_equals_nan():
    state = {"w": fp8(1.0, 2.0), "s": torch.tensor(math.nan), "n": torch.zeros(2, 3)}
    assert kernel_state_diffs(state, {k: v.clone() for k, v in state.items()}) == []


def test_each_difference_is_named_with_shape_max_diff_and_first_index():
    got = {"w": fp8(1.0, 2.0, 3.0), "s": torch.tensor(0.5), "extra": torch.zeros(1), "m": torch.zeros(2, 2)}
    expected = {"w": fp8(1.0, 2.5, 3.5), "s": torch.tensor(0.25), "absent": torch.zeros(1), "m": torch.zeros(4)}
    diffs = {d.name: d for d in kernel_state_diffs(got, expected)}
    assert set(diffs) == {"w", "s", "extra", "absent", "m"}
    assert (diffs["w"].got, diffs["w"].first_index, diffs["w"].max_abs_diff) == ("float8_e4m3fn(3,)", (1,), 0.5)
    assert (diffs["w"].got_value, diffs["w"].expected_value) == (2.0, 2.5)
    assert (diffs["s"].first_index, diffs["s"].max_abs_diff) == ((), 0.25)
    assert diffs["extra"].expected == "absent" and diffs["absent"].got == "missing"
    assert (diffs["m"].got, diffs["m"].expected, diffs["m"].first_index) == ("float32(2, 2)", "float32(4,)", None)


def test_negative_zero_differs_from_zero_bit_for_bit():
    assert [d.name for d in kernel_state_diffs({"x": torch.tensor([-0.0])}, {"x": torch.tensor([0.0])})] == ["x"]


def test_a_tolerance_applies_only_to_the_names_it_matches():
    got, expected = {"a.k_scale": torch.tensor(1.001), "b.weight": torch.tensor(1.001)}, \
        {"a.k_scale": torch.tensor(1.0), "b.weight": torch.tensor(1.0)}
    diffs = kernel_state_diffs(got, expected, tolerances=[Tolerance(r"_scale$", 0.01, "SCALE-2")])
    assert [d.name for d in diffs] == ["b.weight"]


def test_the_failure_message_lists_tensors_and_ends_with_the_rule():
    with pytest.raises(AssertionError) as failure:
        assert_same_as_reference("kernel state after a first load", {"w": fp8(1.0, 2.0)}, {"w": fp8(1.0, 3.0)},
                                 "LOAD-17")
    message = str(failure.value)
    assert "w float8_e4m3fn(2,): max |diff| 1, first at index [1] (2.0 vs reference 3.0)" in message
    assert message.startswith("kernel state after a first load=1 tensor(s) differing") and message.endswith("[LOAD-17]")


def test_a_twin_of_the_reference_matches_after_first_load_dummy_load_and_reload():
    ref = ReferenceAdapter()
    layout = CheckpointLayout(DEFAULT_SPEC, producer="autofp8", kv_scales={"k": 0.5, "v": 0.25})
    twin = Twin(ref, ref, DEFAULT_SPEC, device="cpu").first_load(layout.tensors)
    twin.check("after a first load", "LOAD-17")
    twin.check_mirrors("after a first load", "LOAD-18")
    twin.session([layout.tensors()[:5], layout.tensors()[5:]])
    twin.check("after a session", "RELOAD-13")
    dummy = Twin(ref, ref, DEFAULT_SPEC, device="cpu").dummy_load().reload(layout.tensors)
    dummy.check("after a dummy load and a reload", "RELOAD-13")
    assert mirror_differences(ref, dummy.model, DEFAULT_SPEC) == []


def test_a_stale_mirror_is_reported_by_name():
    ref = ReferenceAdapter()
    layout = CheckpointLayout(DEFAULT_SPEC, producer="autofp8", kv_scales={"k": 0.5, "v": 0.25})
    model = ref.build_model(DEFAULT_SPEC, device="cpu")
    ref.first_load(model, layout.tensors())
    model.get_submodule(DEFAULT_SPEC.attention_prefix(1).rstrip("."))._v_scale_float = 3.0
    assert mirror_differences(ref, model, DEFAULT_SPEC) == [
        f"{DEFAULT_SPEC.attention_prefix(1)}_v_scale_float=3.0, but the device scale is 0.25"]
