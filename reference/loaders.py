"""Weight loaders: the default loader and the shard loader of fused parameters.

Every loader validates before it writes, so a rejected weight leaves the
parameter untouched [LOAD-2, LOAD-6], and writes with ``copy_`` so a copy
counter sees it [COUNT-1].
"""

from __future__ import annotations

from typing import Protocol

import torch

from loadspec.reference.errors import ShapeMismatchError
from loadspec.reference.mapper import ShardId


class WeightLoader(Protocol):
    """A parameter's ``weight_loader``: ``loader(param, loaded_weight)`` or, for a fused shard, with ``shard_id``."""

    def __call__(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None: ...


class Shaped(Protocol):
    """What ``check_default`` reads of a parameter: a tensor, or a named stand-in for one shard of it."""

    @property
    def shape(self) -> torch.Size: ...

    def numel(self) -> int: ...


def _who(param: object) -> str:
    name = getattr(param, "loadspec_name", None)
    return f"{name}: " if name else ""


def check_default(param: Shaped, loaded_weight: torch.Tensor) -> None:
    """Raise ``ShapeMismatchError`` unless ``loaded_weight`` fits ``param`` [LOAD-1, LOAD-2]."""
    if param.numel() == 1 and loaded_weight.numel() == 1:
        return
    if tuple(param.shape) != tuple(loaded_weight.shape):
        raise ShapeMismatchError(
            f"{_who(param)}cannot load a weight of shape {tuple(loaded_weight.shape)} "
            f"into a parameter of shape {tuple(param.shape)}"
        )


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None:
    """Copy ``loaded_weight`` into ``param`` with ``copy_`` [LOAD-1, LOAD-2].

    One-element tensors load whatever their shapes.
    """
    check_default(param, loaded_weight)
    if param.numel() == 1:
        param.data.copy_(loaded_weight.reshape(param.shape))
    else:
        param.data.copy_(loaded_weight)


def check_loadable(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None:
    """Validate a load without writing: the parameter's own ``weight_check`` or the default check."""
    check = getattr(param, "weight_check", None)
    if check is not None:
        check(param, loaded_weight, shard_id)
    elif shard_id is not None:
        raise ShapeMismatchError(f"{_who(param)}is not a fused parameter, but got shard {shard_id!r}")
    else:
        check_default(param, loaded_weight)


def get_weight_loader(param: torch.Tensor) -> WeightLoader:
    """The loader of ``param``: its instance or class ``weight_loader``, else the default [SCALE-7]."""
    return getattr(param, "weight_loader", default_weight_loader)
