"""The KV-cache scale parameter: a 0-d float32 sentinel with a scalar-only loader."""

from __future__ import annotations

import math

import torch

from loadspec.reference.errors import ScaleShapeError, ScaleValueError, ShapeMismatchError
from loadspec.reference.loaders import check_dtype
from loadspec.reference.mapper import ShardId
from loadspec.reference.vocabulary import SCALE_NAMES, SENTINEL

__all__ = ["KVCacheScaleParameter", "HeadScaleParameter", "check_scale_shape", "check_scale_value",
           "check_head_scale_shape", "head_scale_shapes", "is_scale_parameter", "SCALE_NAMES", "SENTINEL"]


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
        """Validate a load without writing: dtype [LOAD-11], shape [SCALE-4], value [LOAD-13].

        A shard id (a ``stacked`` mapper entry) is rejected. This is what the automatic loader runs over the
        whole input before it writes anything; ``weight_loader`` itself, like vLLM's, stores any float value.
        """
        check_dtype(param, loaded_weight)
        name = getattr(param, "loadspec_name", None)
        _reject_shard(name, shard_id)
        check_scale_shape(loaded_weight, name=name)
        check_scale_value(loaded_weight, name=name)

    @staticmethod
    def weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None:
        """Copy a one-element tensor into ``param`` with ``copy_`` [SCALE-3..6]."""
        check_scale_shape(loaded_weight, name=getattr(param, "loadspec_name", None))
        check_dtype(param, loaded_weight)
        param.data.copy_(loaded_weight.reshape(()))


class HeadScaleParameter(KVCacheScaleParameter):
    """A per-head KV-cache scale (compressed-tensors ``attn_head``): ``(heads,)`` float32 sentinels [HEADS-1].

    ``heads`` is ``num_kv_heads`` for k and v, ``num_heads`` for q. Its loader accepts exactly the shapes of
    ``head_scale_shapes(heads)`` [HEADS-2]; every element is validated like a per-tensor scale [LOAD-13].
    """

    def __new__(cls, heads: int, *, device: torch.device | str | None = None) -> HeadScaleParameter:
        data = torch.full((heads,), SENTINEL, dtype=torch.float32, device=device)
        return torch.nn.Parameter.__new__(cls, data, requires_grad=False)

    @staticmethod
    def weight_check(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None:
        """Validate a load without writing: dtype [LOAD-11], shape against the head count [HEADS-2], every value
        [LOAD-13]; a shard id is rejected."""
        check_dtype(param, loaded_weight)
        name = getattr(param, "loadspec_name", None)
        _reject_shard(name, shard_id)
        check_head_scale_shape(loaded_weight, param.numel(), name=name)
        for value in loaded_weight.detach().reshape(-1):
            check_scale_value(value, name=name)

    @staticmethod
    def weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None:
        """Copy one value per head into ``param`` with one ``copy_`` [HEADS-1, SCALE-5, SCALE-6]."""
        check_head_scale_shape(loaded_weight, param.numel(), name=getattr(param, "loadspec_name", None))
        check_dtype(param, loaded_weight)
        param.data.copy_(loaded_weight.reshape(param.shape))


def _reject_shard(name: str | None, shard_id: ShardId | None) -> None:
    """A KV-cache scale is never fused: a shard id (a ``stacked`` mapper entry) raises ``ShapeMismatchError``."""
    if shard_id is not None:
        raise ShapeMismatchError(f"{name or 'KV-cache scale'}: is not a fused parameter, but got shard {shard_id!r}")


def head_scale_shapes(heads: int) -> tuple[tuple[int, ...], ...]:
    """The checkpoint shapes a per-head scale of ``heads`` heads accepts: llm-compressor's ``(heads, 1, 1)`` and its
    flattened forms ``(heads, 1)`` and ``(heads,)`` [HEADS-2]."""
    return ((heads, 1, 1), (heads, 1), (heads,))


def check_head_scale_shape(loaded_weight: torch.Tensor, heads: int, *, name: str | None = None) -> None:
    """Raise ``ScaleShapeError`` naming the weight and both shapes unless ``loaded_weight`` has one of
    ``head_scale_shapes(heads)``: a per-tensor scale is never broadcast to every head [HEADS-2, HEADS-6]."""
    if tuple(loaded_weight.shape) in head_scale_shapes(heads):
        return
    who = f"{name}: " if name else ""
    raise ScaleShapeError(
        f"{who}per-head KV-cache scale expects shape ({heads}, 1, 1) (one value per head; or ({heads},)), "
        f"got shape {tuple(loaded_weight.shape)} [HEADS-2]")


def check_scale_shape(loaded_weight: torch.Tensor, *, name: str | None = None) -> None:
    """Raise ``ScaleShapeError`` unless ``loaded_weight`` has exactly one element [SCALE-4]."""
    if loaded_weight.numel() != 1:
        who = f"{name}: " if name else ""
        raise ScaleShapeError(
            f"{who}KV-cache scale expects a scalar weight, got shape {tuple(loaded_weight.shape)}"
        )


def check_scale_value(loaded_weight: torch.Tensor, *, name: str | None = None) -> None:
    """Raise ``ScaleValueError`` unless a checkpoint KV-cache scale is finite and positive [LOAD-13, KVPROC-7].

    Exactly -1.0 is rejected like any other negative value: the sentinel means "this checkpoint gave no
    scale" and is only ever created by ``create_weights``, never read from a checkpoint.
    """
    value = float(loaded_weight.detach().reshape(()).to("cpu", torch.float32))  # as the parameter stores it
    if math.isfinite(value) and value > 0.0:
        return
    who = f"{name}: " if name else ""
    why = ("-1.0 is the unloaded sentinel, which a checkpoint cannot give" if value == SENTINEL
           else "a KV-cache scale must be finite and positive")
    raise ScaleValueError(f"{who}checkpoint KV-cache scale {value!r} rejected: {why} [LOAD-13]")


def is_scale_parameter(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a KV-cache scale parameter."""
    return isinstance(tensor, KVCacheScaleParameter)
