"""Weight loaders: the default loader and the shard loader of fused parameters.

Every loader validates before it writes, so a rejected weight leaves the
parameter untouched [LOAD-2, LOAD-6], and writes with ``copy_`` so a copy
counter sees it [COUNT-1].
"""

from __future__ import annotations

import torch

from loadspec.reference.errors import ShapeMismatchError


def _who(param: torch.Tensor) -> str:
    name = getattr(param, "loadspec_name", None)
    return f"{name}: " if name else ""


def check_default(param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
    """Raise ``ShapeMismatchError`` unless ``loaded_weight`` fits ``param`` [LOAD-1, LOAD-2]."""
    if param.numel() == 1 and loaded_weight.numel() == 1:
        return
    if tuple(param.shape) != tuple(loaded_weight.shape):
        raise ShapeMismatchError(
            f"{_who(param)}cannot load a weight of shape {tuple(loaded_weight.shape)} "
            f"into a parameter of shape {tuple(param.shape)}"
        )


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
    """Copy ``loaded_weight`` into ``param`` with ``copy_``; one-element tensors load whatever their shapes [LOAD-1, LOAD-2]."""
    check_default(param, loaded_weight)
    if param.numel() == 1:
        param.data.copy_(loaded_weight.reshape(param.shape))
    else:
        param.data.copy_(loaded_weight)


def check_loadable(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
    """Validate a load without writing: the parameter's own ``weight_check`` or the default check."""
    check = getattr(param, "weight_check", None)
    if check is not None:
        check(param, loaded_weight, shard_id)
    elif shard_id is not None:
        raise ShapeMismatchError(f"{_who(param)}is not a fused parameter, but got shard {shard_id!r}")
    else:
        check_default(param, loaded_weight)


def get_weight_loader(param: torch.Tensor):
    """The loader of ``param``: its instance or class ``weight_loader``, else the default [SCALE-7]."""
    return getattr(param, "weight_loader", default_weight_loader)
