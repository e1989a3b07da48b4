"""Uniform assertions for the suite: ``<what>=<got>, but should be <expected> [RULE-ID]``.

Snapshots compare raw bytes, so NaN equals NaN and FP8 compares exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import pytest
import torch


def tensor_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor on the CPU."""
    return tensor.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).clone()


def fail(what: str, got, expected, rule: str) -> NoReturn:
    """Raise the suite's uniform assertion message."""
    __tracebackhide__ = True
    raise AssertionError(f"{what}={got!r}, but should be {expected!r} [{rule}]")


def assert_equal(what: str, got, expected, rule: str) -> None:
    """``got == expected`` (floats compared exactly)."""
    __tracebackhide__ = True
    if got != expected:
        fail(what, got, expected, rule)


def assert_raises_value_error(what: str, call: Callable[[], object], rule: str, *, mentions=()) -> ValueError:
    """``call()`` raises ``ValueError`` (any subclass) whose message contains every string in ``mentions``."""
    __tracebackhide__ = True
    try:
        call()
    except ValueError as exc:
        for needle in mentions:
            if str(needle) not in str(exc):
                fail(f"{what} error message", str(exc), f"a message naming {needle!r}", rule)
        return exc
    except Exception as exc:  # noqa: BLE001 - the point is to name what was raised instead
        fail(f"{what} raised", f"{type(exc).__name__}: {exc}", "ValueError", rule)
    fail(f"{what} raised", "nothing", "ValueError", rule)


def snapshot(tensors: dict[str, torch.Tensor], mirrors: dict[str, float] | None = None) -> dict[str, object]:
    """Identity, data_ptr, dtype, shape and bytes of live tensors, plus host mirrors.

    A ``meta`` tensor (no data: a reload left it unmaterialized) is recorded as ``"meta"`` in place of its
    data_ptr, so ``assert_unchanged`` names it instead of crashing on copying it.
    """
    state: dict[str, object] = {
        name: ("meta" if tensor.is_meta else tensor.data_ptr(), tensor.dtype, tuple(tensor.shape),
               torch.empty(0, dtype=torch.uint8) if tensor.is_meta else tensor_bytes(tensor))
        for name, tensor in tensors.items()}
    for name, value in (mirrors or {}).items():
        state[f"mirror:{name}"] = value
    return state


def assert_unchanged(what: str, before: dict, after: dict, rule: str) -> None:
    """Every tensor and mirror of ``before`` is present, in place and bit-identical in ``after``."""
    __tracebackhide__ = True
    if before.keys() != after.keys():
        fail(f"{what} tensor names", sorted(after.keys() ^ before.keys()), "no names added or removed", rule)
    for name, old in before.items():
        new = after[name]
        if isinstance(old, tuple):
            if old[:3] != new[:3]:
                fail(f"{what} {name} (data_ptr, dtype, shape)", new[:3], old[:3], rule)
            if not torch.equal(old[3], new[3]):
                fail(f"{what} {name}", "changed bytes", "unchanged", rule)
        elif not (old == new or (old != old and new != new)):
            fail(f"{what} {name}", new, old, rule)


def state_differences(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, str]:
    """How kernel state ``got`` differs from ``expected``, by name (empty when bit-identical)."""
    out = {}
    for name in sorted(got.keys() | expected.keys()):
        if name not in got or name not in expected:
            out[name] = "missing" if name not in got else "unexpected"
            continue
        a, b = got[name], expected[name]
        if (a.dtype, tuple(a.shape)) != (b.dtype, tuple(b.shape)):
            out[name] = f"dtype/shape {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        elif not torch.equal(tensor_bytes(a), tensor_bytes(b)):
            out[name] = f"values differing by up to {(a.float() - b.float()).abs().max().item():g}"
    return out


def assert_same_state(what: str, got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rule: str) -> None:
    """Two exported kernel states are bit-identical (the first difference is named)."""
    __tracebackhide__ = True
    differences = state_differences(got, expected)
    renamed = sorted(name for name, how in differences.items() if how in ("missing", "unexpected"))
    if renamed:
        fail(f"{what} names", renamed, "the same names", rule)
    for name, how in differences.items():
        fail(f"{what} {name}", how, "bit-identical dtype, shape and values", rule)


def outputs_as_floats(outputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Device output scales as Python floats."""
    return {name: float(value) for name, value in outputs.items()}


def skip_unless(adapter, *capabilities: str) -> None:
    """Skip (with the capability named) unless the adapter declares every capability."""
    lacking = [c for c in capabilities if c not in adapter.capabilities]
    if lacking:
        pytest.skip(f"{adapter.name} does not declare capability {', '.join(lacking)}")
