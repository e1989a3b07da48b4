"""Snapshots of a model's tensors and host mirrors, to prove a rejected call changed nothing."""

from __future__ import annotations

import torch

from loadspec.reference.vocabulary import CPU_MIRRORS, FLOAT_MIRRORS
from loadspec.conformance.assertions import tensor_bytes


_bits = tensor_bytes  # raw bytes: NaN equals NaN, FP8 compares exactly


def snapshot(model: torch.nn.Module) -> dict:
    """Every parameter and buffer (value, identity, data_ptr) and every KV host mirror."""
    state = {}
    for module_name, module in model.named_modules():
        for kind, tensors in (("param", module._parameters), ("buffer", module._buffers)):
            for name, tensor in tensors.items():
                if tensor is not None:
                    state[f"{kind}:{module_name}.{name}"] = (id(tensor), tensor.data_ptr(), tensor.dtype,
                                                             tuple(tensor.shape), _bits(tensor))
        for mirror in (*FLOAT_MIRRORS.values(), *CPU_MIRRORS.values()):
            if hasattr(module, mirror):
                value = getattr(module, mirror)
                state[f"mirror:{module_name}.{mirror}"] = _bits(value) if isinstance(value, torch.Tensor) else value
    return state


def assert_unchanged(before: dict, after: dict) -> None:
    """Fail naming the first tensor or mirror that differs."""
    __tracebackhide__ = True
    assert before.keys() == after.keys(), (
        f"tensors added or removed: +{sorted(after.keys() - before.keys())} -{sorted(before.keys() - after.keys())}")
    for key, old in before.items():
        new = after[key]
        if isinstance(old, tuple):
            assert old[:4] == new[:4], f"{key} (id, data_ptr, dtype, shape)={new[:4]}, but should be {old[:4]}"
            assert torch.equal(old[4], new[4]), f"{key} changed value"
        elif isinstance(old, torch.Tensor):
            assert torch.equal(old, new), f"{key}={new}, but should be {old}"
        else:
            assert old == new, f"{key}={new!r}, but should be {old!r}"


def kernel_bits(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An exported kernel state with FP8 tensors viewed as bytes, for bit-exact comparison."""
    return {name: _bits(tensor) for name, tensor in state.items()}


def assert_same_kernel_state(got: dict, expected: dict) -> None:
    """Two exported kernel states are bit-identical."""
    __tracebackhide__ = True
    assert got.keys() == expected.keys(), f"names differ: {sorted(got.keys() ^ expected.keys())}"
    a, b = kernel_bits(got), kernel_bits(expected)
    for name in a:
        assert got[name].dtype == expected[name].dtype and got[name].shape == expected[name].shape, (
            f"{name} dtype/shape={got[name].dtype}/{tuple(got[name].shape)}, "
            f"but should be {expected[name].dtype}/{tuple(expected[name].shape)}")
        assert torch.equal(a[name], b[name]), f"{name} differs"
