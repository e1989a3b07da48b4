"""Counting loaded elements through ``copy_`` with a torch dispatch mode."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_COPY = torch.ops.aten.copy_.default


def region_key(tensor: torch.Tensor) -> tuple:
    """Identifies the destination region of a copy; meta tensors all share storage address 0."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))


class CopyCounter(TorchDispatchMode):
    """Counts elements written by ``copy_`` [COUNT-1], and nothing else [COUNT-2].

    A broadcasting ``copy_`` counts the destination's elements [COUNT-5].
    ``per_destination`` keeps the count for each destination region, so callers
    can count a region written twice once [COUNT-3].
    """

    def __init__(self) -> None:
        super().__init__()
        self.copied = 0
        self.per_destination: dict[tuple, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _COPY:
            destination = args[0]
            numel = destination.numel()
            self.copied += numel
            key = region_key(destination)
            self.per_destination[key] = self.per_destination.get(key, 0) + numel
        return func(*args, **(kwargs or {}))


def count_copied(fn, *args, cap: int | None = None, **kwargs) -> tuple[int, object]:
    """Run ``fn`` under a ``CopyCounter``; return ``(elements copied, capped at cap, result)`` [COUNT-3]."""
    with CopyCounter() as counter:
        result = fn(*args, **kwargs)
    copied = counter.copied if cap is None else min(counter.copied, cap)
    return copied, result
