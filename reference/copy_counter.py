"""Counting loaded elements through ``copy_`` with a torch dispatch mode."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_COPY = torch.ops.aten.copy_.default

RegionKey: TypeAlias = "tuple[int, int | torch.SymInt, tuple[int, ...], tuple[int, ...]]"
"""A destination region: storage address, storage offset, shape, stride."""


def region_key(tensor: torch.Tensor) -> RegionKey:
    """Identifies the destination region of a copy; meta tensors all share storage address 0."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))


# torch does not annotate TorchDispatchMode (__init_subclass__, __init__): the two calls it makes are untyped.
class CopyCounter(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts elements written by ``copy_`` [COUNT-1], and nothing else [COUNT-2].

    A broadcasting ``copy_`` counts the destination's elements [COUNT-5].
    ``per_destination`` maps each destination region to its element count, so a
    region written twice counts once [COUNT-3, COUNT-6].
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # TorchDispatchMode.__init__ is not annotated
        self.copied = 0
        self.per_destination: dict[RegionKey, int] = {}

    # Any: a dispatch mode sees every aten op, with whatever arguments and results it has.
    def __torch_dispatch__(self, func: torch._ops.OpOverload[..., Any], types: Sequence[type],
                           args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> Any:
        if func is _COPY:
            destination = args[0]
            numel = destination.numel()
            self.copied += numel
            self.per_destination[region_key(destination)] = numel  # a region written again adds nothing
        return func(*args, **(kwargs or {}))


def credited_elements(fn: Callable[..., object], *args: object, cap: int, **kwargs: object) -> int:
    """Elements ``fn(*args)`` writes with ``copy_``, each region once, capped at ``cap`` [COUNT-3, COUNT-6]."""
    counter = CopyCounter()
    with counter:
        fn(*args, **kwargs)
    return min(sum(counter.per_destination.values()), cap)
