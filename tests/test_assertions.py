"""The suite's assertion helpers report what they see, even on a model a reload left half-built."""

from __future__ import annotations

import pytest
import torch

from loadspec.conformance.assertions import assert_unchanged, snapshot


def test_a_meta_tensor_is_named_not_a_crash():
    before = snapshot({"w": torch.ones(2)})
    after = snapshot({"w": torch.empty(2, device="meta")})
    with pytest.raises(AssertionError, match=r"model w \(data_ptr, dtype, shape\)=\('meta'.*\[LOAD-6\]"):
        assert_unchanged("model", before, after, "LOAD-6")


def test_unchanged_snapshots_pass_and_changed_bytes_fail():
    tensor = torch.ones(2)
    before = snapshot({"w": tensor}, {"_k_scale_float": 0.5})
    assert_unchanged("model", before, snapshot({"w": tensor}, {"_k_scale_float": 0.5}), "LOAD-6")
    tensor.add_(1)
    with pytest.raises(AssertionError, match="changed bytes"):
        assert_unchanged("model", before, snapshot({"w": tensor}, {"_k_scale_float": 0.5}), "LOAD-6")
