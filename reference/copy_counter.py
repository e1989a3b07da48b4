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
    ``per_destination`` maps each destination region to its element count, so a
    region written twice counts once [COUNT-3, COUNT-6].
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
            self.per_destination[region_key(destination)] = numel  # a region written again adds nothing
        return func(*args, **(kwargs or {}))


def credited_elements(fn, *args, cap: int, **kwargs) -> int:
    """Elements ``fn(*args)`` writes with ``copy_``, each destination region once, capped at ``cap`` [COUNT-3, COUNT-6]."""
    with CopyCounter() as counter:
        fn(*args, **kwargs)
    return min(sum(counter.per_destination.values()), cap)
