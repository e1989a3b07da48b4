"""The KV-cache scale parameter: a 0-d float32 sentinel with a scalar-only loader."""

from __future__ import annotations

import torch

from loadspec.reference.errors import ScaleShapeError, ShapeMismatchError
from loadspec.reference.mapper import ShardId
from loadspec.reference.vocabulary import SCALE_NAMES, SENTINEL

__all__ = ["KVCacheScaleParameter", "check_scale_shape", "is_scale_parameter", "SCALE_NAMES", "SENTINEL"]


class KVCacheScaleParameter(torch.nn.Parameter):
    """A per-tensor KV-cache scale, created as the sentinel -1.0 [SCALE-1, SCALE-2].

    ``weight_loader`` is a class-level loader; an instance attribute of the same
    name shadows it [SCALE-7].
    """

    def __new__(cls, *, device: torch.device | str | None = None) -> KVCacheScaleParameter:
        data = torch.full((), SENTINEL, dtype=torch.float32, device=device)
        return super().__new__(cls, data, requires_grad=False)

    @staticmethod
    def weight_check(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None:
        """Validate a load without writing [SCALE-4]; a shard id (a ``stacked`` mapper entry) is rejected."""
        name = getattr(param, "loadspec_name", None)
        if shard_id is not None:
            who = name or "KV-cache scale"
            raise ShapeMismatchError(f"{who}: is not a fused parameter, but got shard {shard_id!r}")
        check_scale_shape(loaded_weight, name=name)

    @staticmethod
    def weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None:
        """Copy a one-element tensor into ``param`` with ``copy_`` [SCALE-3..6]."""
        check_scale_shape(loaded_weight, name=getattr(param, "loadspec_name", None))
        param.data.copy_(loaded_weight.reshape(()))


def check_scale_shape(loaded_weight: torch.Tensor, *, name: str | None = None) -> None:
    """Raise ``ScaleShapeError`` unless ``loaded_weight`` has exactly one element [SCALE-4]."""
    if loaded_weight.numel() != 1:
        who = f"{name}: " if name else ""
        raise ScaleShapeError(
            f"{who}KV-cache scale expects a scalar weight, got shape {tuple(loaded_weight.shape)}"
        )


def is_scale_parameter(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a KV-cache scale parameter."""
    return isinstance(tensor, KVCacheScaleParameter)
