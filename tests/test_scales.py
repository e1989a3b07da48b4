"""SCALE, reference internals: the error class and message of a rejected scale load; the inexact-value strategy.

``conformance/test_scale.py`` checks SCALE-1..7 through the adapter, on CPU and CUDA; it can
only ask for a ``ValueError`` naming the shape.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from loadspec.reference.errors import ScaleShapeError
from loadspec.reference.scales import KVCacheScaleParameter
from loadspec.reference.vocabulary import SENTINEL
from loadspec.strategies.scales import inexact_scale_values, is_valid_scale, stored_as

BAD_SHAPES = [(0,), (2,), (3, 1, 1), (1, 2)]


@pytest.mark.parametrize("shape", BAD_SHAPES, ids=str)
def test_non_scalar_raises_scale_shape_error_naming_the_parameter(shape):
    param = KVCacheScaleParameter()
    param.loadspec_name = "model.layers.0.self_attn.attn.k_scale"
    with pytest.raises(ScaleShapeError) as info:
        KVCacheScaleParameter.weight_loader(param, torch.ones(shape))
    assert str(tuple(shape)) in str(info.value) and "attn.k_scale" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert param.item() == SENTINEL


@given(data=st.data(), dtype=st.sampled_from([torch.bfloat16, torch.float16]))
def test_inexact_scale_values_round_in_the_reduced_dtype_but_stay_valid(data, dtype):
    value = data.draw(inexact_scale_values(dtype=dtype))
    assert stored_as(value, torch.float32) == value
    assert stored_as(value, dtype) != value
    assert is_valid_scale(stored_as(value, dtype))
