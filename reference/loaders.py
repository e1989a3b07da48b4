"""Weight loaders: the default loader and the shard loader of fused parameters.

Every loader validates before it writes, so a rejected weight leaves the
parameter untouched [LOAD-2, LOAD-6], and writes with ``copy_`` so a copy
counter sees it [COUNT-1].
"""

from __future__ import annotations

from typing import Protocol

import torch

from loadspec.reference.errors import DtypeMismatchError, ShapeMismatchError
from loadspec.reference.mapper import ShardId

FLOAT_DTYPES: frozenset[torch.dtype] = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
"""What a float parameter (norm, embedding, unquantized linear, any scale) accepts [LOAD-11]: no FP8, integer,
bool or complex tensor, since converting those with ``copy_`` silently changes what they mean."""


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


def accepted_dtypes(param: torch.Tensor) -> frozenset[torch.dtype]:
    """The checkpoint dtypes ``param``'s loader accepts [LOAD-11].

    A parameter may state them (``param.weight_dtypes``, set by its quant method: an FP8
    weight accepts only ``float8_e4m3fn``); otherwise a float parameter accepts the float
    dtypes of ``FLOAT_DTYPES`` and any other parameter only its own dtype.
    """
    stated: frozenset[torch.dtype] | None = getattr(param, "weight_dtypes", None)
    if stated is not None:
        return stated
    return FLOAT_DTYPES if param.dtype in FLOAT_DTYPES else frozenset({param.dtype})


def check_dtype(param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
    """Raise ``DtypeMismatchError`` unless ``param`` accepts ``loaded_weight``'s dtype [LOAD-11]."""
    accepted = accepted_dtypes(param)
    if loaded_weight.dtype not in accepted:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in accepted))
        raise DtypeMismatchError(
            f"{_who(param)}cannot load a {str(loaded_weight.dtype).removeprefix('torch.')} weight into a "
            f"{str(param.dtype).removeprefix('torch.')} parameter (it accepts {names}) [LOAD-11]")


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None:
    """Copy ``loaded_weight`` into ``param`` with ``copy_`` [LOAD-1, LOAD-2].

    One-element tensors load whatever their shapes; the dtype must be one ``param`` accepts [LOAD-11].
    """
    check_default(param, loaded_weight)
    check_dtype(param, loaded_weight)
    if param.numel() == 1:
        param.data.copy_(loaded_weight.reshape(param.shape))
    else:
        param.data.copy_(loaded_weight)


def check_loadable(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None:
    """Validate a load without writing: the parameter's own ``weight_check`` (which checks the dtype first, as
    every one of the reference's does), or the dtype [LOAD-11] and then the default check."""
    check = getattr(param, "weight_check", None)
    if check is not None:
        check(param, loaded_weight, shard_id)
        return
    check_dtype(param, loaded_weight)
    if shard_id is not None:
        raise ShapeMismatchError(f"{_who(param)}is not a fused parameter, but got shard {shard_id!r}")
    check_default(param, loaded_weight)


def get_weight_loader(param: torch.Tensor) -> WeightLoader:
    """The loader of ``param``: its instance or class ``weight_loader``, else the default [SCALE-7]."""
    return getattr(param, "weight_loader", default_weight_loader)
