"""Linear layers (plain and fused) and their quant methods: unquantized and FP8 e4m3.

FP8 processing really transforms what was loaded, so reload bugs show: per-tensor
weights of a fused layer are re-quantized to the largest shard scale, and
per-channel weights are stored transposed for the kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import torch

from loadspec.reference.errors import LinearScaleValueError, ShapeMismatchError
from loadspec.reference.loaders import check_default, check_dtype
from loadspec.reference.mapper import ShardId
from loadspec.reference.vocabulary import FP8_DTYPE, FP8_MAX

Shards: TypeAlias = "Mapping[ShardId, tuple[int, int]]"
"""Shard id -> ``(offset, size)`` rows of a fused parameter along dim 0."""


LINEAR_SCALE_MAX = float(torch.finfo(torch.float32).max) / FP8_MAX
"""Largest accepted ``weight_scale``/``input_scale`` (about 7.6e35) [LOAD-12]: the bound is that the largest FP8
value times the scale stays finite in float32, so the dequantized weight (or the activation range) is finite."""


def check_linear_scale(loaded_weight: torch.Tensor, *, name: str | None) -> None:
    """Raise ``LinearScaleValueError`` unless every element is finite, positive and at most ``LINEAR_SCALE_MAX``."""
    values = loaded_weight.detach().to("cpu", torch.float32)  # as the float32 scale parameter stores them
    bad = ~(torch.isfinite(values) & (values > 0) & (values <= LINEAR_SCALE_MAX))
    if bool(bad.any()):
        first = float(values.reshape(-1)[bad.reshape(-1)][0])
        raise LinearScaleValueError(
            f"{name or 'linear scale'}: {int(bad.sum())} of {values.numel()} element(s) are not a usable scale "
            f"(e.g. {first!r}); a weight_scale or input_scale must be finite, positive and at most "
            f"{LINEAR_SCALE_MAX:.3g} [LOAD-12]")


def quantize_fp8(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``values / scale`` clamped to the e4m3 range and cast to float8_e4m3fn."""
    return (values.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


REQUANTIZE_CHUNK_ELEMENTS = 1 << 20
"""Elements of the float32 temporary ``requantize_rows_`` works through at a time on the CPU (4 MiB): processing a
shard needs this much scratch memory, not four float32 copies of the shard."""

REQUANTIZE_CHUNK_ELEMENTS_CUDA = 1 << 24
"""The same on a GPU (64 MiB of float32): a chunk costs five kernel launches, about 25 us of host time, against
about 6 us of device work at 2^20 elements, so small chunks would make the reload bound by the host."""


def requantize_rows_(rows: torch.Tensor, scale: torch.Tensor, new_scale: torch.Tensor, *,
                     chunk_elements: int | None = None) -> None:
    """Re-quantize FP8 ``rows`` (dim 0 chunks) from ``scale`` to ``new_scale`` in place [LOAD-17, LOAD-20].

    The bytes equal ``quantize_fp8(rows.float() * scale, new_scale)``: the same float32 multiply, divide and clamp,
    done in place on one float32 chunk of at most ``chunk_elements`` (default ``REQUANTIZE_CHUNK_ELEMENTS``, on a GPU
    ``REQUANTIZE_CHUNK_ELEMENTS_CUDA``; at least one row) at a time.
    """
    if rows.numel() == 0:
        return
    if chunk_elements is None:
        chunk_elements = REQUANTIZE_CHUNK_ELEMENTS_CUDA if rows.is_cuda else REQUANTIZE_CHUNK_ELEMENTS
    row_elements = rows[0].numel() if rows.dim() > 1 else 1
    step = max(1, chunk_elements // max(row_elements, 1))
    for start in range(0, rows.shape[0], step):
        out = rows.narrow(0, start, min(step, rows.shape[0] - start))
        chunk = out.float()
        chunk.mul_(scale)
        chunk.div_(new_scale)
        chunk.clamp_(-FP8_MAX, FP8_MAX)
        out.copy_(chunk)


class ShardLoader:
    """Loads a fused parameter shard by shard along dim 0 [LOAD-1, LOAD-2]; a plain load fills it whole.

    ``shards`` maps a shard id to ``(offset, size)`` rows of the parameter.
    ``per_shard_scalar`` marks a per-tensor scale holding one element per shard; ``scale`` marks any linear
    scale, whose values are validated [LOAD-12]. Dtypes are checked against the parameter's [LOAD-11].
    """

    def __init__(self, shards: Shards, *, per_shard_scalar: bool = False, scale: bool = False) -> None:
        self.shards = dict(shards)
        self.per_shard_scalar = per_shard_scalar
        self.scale = scale or per_shard_scalar

    def _target(self, param: torch.Tensor, shard_id: ShardId | None) -> torch.Tensor:
        if shard_id is None:
            return param.data
        if shard_id not in self.shards:
            raise ShapeMismatchError(
                f"{getattr(param, 'loadspec_name', 'parameter')}: unknown shard {shard_id!r}, "
                f"expected one of {sorted(map(str, self.shards))}")
        offset, size = self.shards[shard_id]
        return param.data.narrow(0, offset, size)

    def _target_shape(self, param: torch.Tensor, shard_id: ShardId | None) -> torch.Size:
        """``self._target(param, shard_id).shape`` without making the view (a validation runs once per tensor)."""
        if shard_id is None:
            return param.shape
        region = self.shards.get(shard_id)
        shape = param.shape
        if region is None or not shape or region[0] < 0 or region[1] < 0 or sum(region) > shape[0]:
            return self._target(param, shard_id).shape  # raises as the view does
        return torch.Size((region[1], *shape[1:]))

    def weight_check(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None:
        """Validate a (shard) load without writing: dtype [LOAD-11], shape and, for a scale, its values."""
        check_dtype(param, loaded_weight)
        target = self._target_shape(param, shard_id)
        name = getattr(param, "loadspec_name", None)
        if self.scale:
            check_linear_scale(loaded_weight, name=f"{name} shard {shard_id!r}" if shard_id is not None else name)
        if self.per_shard_scalar and shard_id is not None:
            if loaded_weight.numel() != 1:
                raise ShapeMismatchError(
                    f"{getattr(param, 'loadspec_name', 'parameter')} shard {shard_id!r}: per-tensor scale "
                    f"expects one element, got shape {tuple(loaded_weight.shape)}")
            return
        if loaded_weight.dim() == len(target) + 1 and loaded_weight.shape[-1] == 1:
            loaded_weight = loaded_weight.squeeze(-1)  # per-channel scales stored as (out, 1)
        check_default(_Named(target, name, shard_id), loaded_weight)

    def __call__(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None:
        self.weight_check(param, loaded_weight, shard_id)
        target = self._target(param, shard_id)
        target.copy_(loaded_weight.reshape(target.shape))  # shapes checked above


class _Named:
    """A shape carrier naming the parameter (and shard) in error messages (the name is built only for one)."""

    def __init__(self, shape: torch.Size, name: str | None, shard_id: ShardId | None) -> None:
        self.shape = shape
        self._name = name
        self._shard_id = shard_id

    @property
    def loadspec_name(self) -> str | None:
        suffix = f" shard {self._shard_id!r}" if self._shard_id is not None else ""
        return f"{self._name}{suffix}" if self._name else None

    def numel(self) -> int:
        return self.shape.numel()


def _attach(param: torch.nn.Parameter, loader: ShardLoader) -> torch.nn.Parameter:
    # vLLM's convention: a parameter carries its loader as attributes, which torch's Parameter type does not declare.
    param.weight_loader = loader  # type: ignore[attr-defined]
    param.weight_check = loader.weight_check  # type: ignore[attr-defined]
    return param


class UnquantizedLinearMethod:
    """Float weights; processing changes nothing, so reload writes them in place once."""

    preserves_layout = True
    scheme = "none"

    def create_weights(self, layer: Linear, shards: Shards, out_features: int, in_features: int, dtype: torch.dtype,
                       device: torch.device | str | None) -> None:
        weight = torch.nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device),
                                    requires_grad=False)
        layer.register_parameter("weight", _attach(weight, ShardLoader(shards)))

    def process_weights_after_loading(self, layer: Linear) -> None:
        """Nothing to do: the checkpoint layout is the kernel layout."""

    def dequantized_weight(self, layer: Linear) -> torch.Tensor:
        """The effective ``[out, in]`` float32 weight."""
        return layer.weight.float()

    def export(self, layer: Linear) -> dict[str, torch.Tensor]:
        """Kernel state: ``weight`` ``[out, in]``."""
        return {"weight": layer.weight.detach()}


class Fp8LinearMethod:
    """FP8 e4m3 weights with per-tensor (one scale per shard) or per-channel scales.

    Every scale parameter is float32 whatever the model's dtype, and its loader converts a bf16/fp16/fp32
    checkpoint scale with ``copy_``, so it holds exactly the stored value [DTYPE-2].

    ``static_input`` adds a static activation scale ``input_scale``: one element per fused shard, each loaded
    from that shard's checkpoint ``input_scale`` and validated like ``weight_scale`` [STATIC-1, LOAD-12], and
    required on a first load [STATIC-3]; processing keeps the largest shard's, 0-d [STATIC-2].
    """

    preserves_layout = False

    def __init__(self, strategy: str, *, static_input: bool = False) -> None:
        if strategy not in ("tensor", "channel"):
            raise ValueError(f"strategy={strategy!r}, but should be 'tensor' or 'channel'")
        self.strategy = strategy
        self.scheme = f"fp8_per_{strategy}"
        self.static_input = static_input

    @staticmethod
    def _per_shard_scalars(shards: Shards, device: torch.device | str | None) -> torch.nn.Parameter:
        index = {shard: (i, 1) for i, shard in enumerate(shards)}
        scale = torch.nn.Parameter(torch.empty(len(shards), dtype=torch.float32, device=device), requires_grad=False)
        return _attach(scale, ShardLoader(index, per_shard_scalar=True))

    @staticmethod
    def _fp8_weight(param: torch.nn.Parameter) -> torch.nn.Parameter:
        param.weight_dtypes = frozenset({FP8_DTYPE})  # type: ignore[attr-defined]  # only e4m3fn [LOAD-11]
        return param

    def create_weights(self, layer: Linear, shards: Shards, out_features: int, in_features: int, dtype: torch.dtype,
                       device: torch.device | str | None) -> None:
        weight = torch.nn.Parameter(torch.empty(out_features, in_features, dtype=FP8_DTYPE, device=device),
                                    requires_grad=False)
        layer.register_parameter("weight", self._fp8_weight(_attach(weight, ShardLoader(shards))))
        if self.strategy == "tensor":
            scale = self._per_shard_scalars(shards, device)
        else:
            scale = _attach(torch.nn.Parameter(torch.empty(out_features, dtype=torch.float32, device=device),
                                               requires_grad=False), ShardLoader(shards, scale=True))
        layer.register_parameter("weight_scale", scale)
        if self.static_input:
            layer.register_parameter("input_scale", self._per_shard_scalars(shards, device))
        layer.fp8_shards = dict(shards)

    def process_weights_after_loading(self, layer: Linear) -> None:
        """Per-tensor: re-quantize every shard to the largest shard scale, dequantized in float32 and rounded once
        [LOAD-17, LOAD-20], in place and in row chunks (``requantize_rows_``). Per-channel: store ``weight``
        transposed.

        A static ``input_scale`` becomes the largest shard's, 0-d [STATIC-2], for per-tensor and per-channel
        weights alike: the fused shards read the same activation, so one scale must cover every shard's range
        (vLLM ``fp8.py`` ``Fp8LinearMethod.process_weights_after_loading``: ``input_scale.max()``;
        ``compressed_tensors_w8a8_fp8.py`` ``CompressedTensorsW8A8Fp8.process_weights_after_loading``).
        """
        weight, scale = layer.weight, layer.weight_scale
        if self.strategy == "tensor":
            # in place over the loaded weight, one float32 chunk at a time: no second weight, no float32 shard
            max_scale = scale.max()
            for i, (offset, size) in enumerate(layer.fp8_shards.values()):
                requantize_rows_(weight.data.narrow(0, offset, size), scale[i], max_scale)
            new_weight, new_scale = weight.data, max_scale.reshape(())
        else:
            new_weight, new_scale = weight.t().contiguous(), scale
        self.install_processed(layer, new_weight, new_scale)

    def install_processed(self, layer: Linear, weight: torch.Tensor, weight_scale: torch.Tensor) -> None:
        """Register the processed kernel ``weight`` and ``weight_scale`` in place of the loaded ones, and a static
        ``input_scale`` as the largest shard's, 0-d [STATIC-2]."""
        del layer.weight, layer.weight_scale
        layer.register_parameter("weight", torch.nn.Parameter(weight, requires_grad=False))
        layer.register_parameter("weight_scale", torch.nn.Parameter(weight_scale.clone(), requires_grad=False))
        if self.static_input:
            input_scale = layer.input_scale.max().reshape(())
            del layer.input_scale
            layer.register_parameter("input_scale", torch.nn.Parameter(input_scale.clone(), requires_grad=False))

    def kernel_weight_out_in(self, layer: Linear) -> torch.Tensor:
        """The processed FP8 weight as ``[out, in]``."""
        return layer.weight if self.strategy == "tensor" else layer.weight.t()

    def dequantized_weight(self, layer: Linear) -> torch.Tensor:
        """The effective ``[out, in]`` float32 weight."""
        weight = self.kernel_weight_out_in(layer).float()
        if self.strategy == "tensor":
            return weight * layer.weight_scale
        return weight * layer.weight_scale[:, None]

    def export(self, layer: Linear) -> dict[str, torch.Tensor]:
        """Kernel state: FP8 ``weight`` ``[out, in]``, float32 ``weight_scale`` (``()`` or ``(out,)``).

        With ``static_input``, also ``input_scale`` ``()``.
        """
        state = {"weight": self.kernel_weight_out_in(layer).detach().contiguous(),
                 "weight_scale": layer.weight_scale.detach()}
        if self.static_input:
            state["input_scale"] = layer.input_scale.detach()
        return state


LinearMethod: TypeAlias = "UnquantizedLinearMethod | Fp8LinearMethod"
"""The quant method of a ``Linear``."""


def linear_method(scheme: str, *, static_input: bool = False) -> LinearMethod:
    """The quant method for ``scheme``: ``none``, ``fp8_per_tensor`` or ``fp8_per_channel``.

    ``static_input`` applies to FP8 only.
    """
    if scheme == "none":
        return UnquantizedLinearMethod()
    if scheme in ("fp8_per_tensor", "fp8_per_channel"):
        return Fp8LinearMethod(scheme.rsplit("_", 1)[1], static_input=static_input)
    raise ValueError(f"unknown linear quant scheme {scheme!r}")


class Linear(torch.nn.Module):
    """A linear layer, optionally fused from several checkpoint projections (``shards``)."""

    # Registered by the quant method's create_weights and replaced by its processing (FP8 only: the last three).
    weight: torch.nn.Parameter
    weight_scale: torch.nn.Parameter
    input_scale: torch.nn.Parameter
    fp8_shards: dict[ShardId, tuple[int, int]]

    def __init__(self, in_features: int, out_sizes: Mapping[ShardId, int], *, scheme: str = "none",
                 static_input: bool = False, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        offsets: dict[ShardId, tuple[int, int]] = {}
        offset = 0
        for shard, size in out_sizes.items():
            offsets[shard] = (offset, size)
            offset += size
        self.out_features = offset
        self.quant_method = linear_method(scheme, static_input=static_input)
        self.quant_method.create_weights(self, offsets, offset, in_features, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.quant_method.dequantized_weight(self).t()
