"""The KV-cache method: creates sentinel scale parameters and resolves them after loading."""

from __future__ import annotations

import math
import struct
import warnings
from typing import cast

import torch

from loadspec.reference.errors import ScaleValueError, UnsupportedSchemeError
from loadspec.reference.registration import has_parameter_or_attribute, put_parameter, registered_tensor, set_plain
from loadspec.reference.scales import HeadScaleParameter, KVCacheScaleParameter
from loadspec.reference.vocabulary import (
    CPU_MIRRORS,
    FLOAT_MIRRORS,
    OUTPUT_BUFFERS,
    PER_HEAD_SCALES,
    PER_TOKEN_HEAD_KV_DTYPES,
    SCALE_NAMES,
    SENTINEL,
    UNQUANTIZED_KV_DTYPES,
)


class MissingKVScalesWarning(UserWarning):
    """Neither k_scale nor v_scale was loaded; 1.0 is used [KVPROC-3]."""


__all__ = ["KVCacheMethod", "MissingKVScalesWarning", "set_default_scales", "reset_default_scales", "write_outputs",
           "output_scales", "OUTPUT_BUFFERS", "FLOAT_MIRRORS", "CPU_MIRRORS", "PER_HEAD_SCALES", "reduce_q_to_kv_heads",
           "tp_head_scales"]

OutputValue = float | torch.Tensor
"""A resolved output scale: a float (per tensor) or a ``(num_kv_heads,)`` float32 tensor (per head)."""


def set_default_scales(layer: torch.nn.Module, *, device: torch.device | str | None = None) -> None:
    """Give an attention layer its output scales at 1.0: device buffers and host mirrors [KVPROC-11]."""
    for buffer in OUTPUT_BUFFERS.values():
        layer.register_buffer(buffer, torch.ones((), dtype=torch.float32, device=device), persistent=True)
    for mirror in FLOAT_MIRRORS.values():
        setattr(layer, mirror, 1.0)
    for mirror in CPU_MIRRORS.values():
        setattr(layer, mirror, torch.ones((), dtype=torch.float32))


def reset_default_scales(layer: torch.nn.Module) -> None:
    """Write 1.0 into every output scale and mirror in place (same tensor objects) [KVPROC-11, KVPROC-13]."""
    write_outputs(layer, {name: 1.0 for name in SCALE_NAMES})


def as_float32(value: float) -> float:
    """``value`` rounded to float32, as ``float(torch.tensor(value, dtype=torch.float32))`` (the C cast, round to
    nearest even; out of float32's range: what torch gives, infinity), without creating a tensor."""
    try:
        rounded: float = _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except OverflowError:
        return float(torch.tensor(value, dtype=torch.float32))
    return rounded


_FLOAT32 = struct.Struct("f")


def write_outputs(layer: torch.nn.Module, values: dict[str, OutputValue]) -> None:
    """Write resolved scales into the device buffers and all host mirrors, in place [KVPROC-11, KVPROC-13].

    A per-head value is copied into its ``(num_kv_heads,)`` buffer; its host mirrors hold the largest head's
    scale, the one scalar a per-tensor kernel may use [HEADS-4, HEADS-5].
    """
    for name, value in values.items():
        if isinstance(value, torch.Tensor):
            registered_tensor(layer, OUTPUT_BUFFERS[name]).copy_(value)
            value = float(value.max())
        else:
            registered_tensor(layer, OUTPUT_BUFFERS[name]).fill_(value)
        set_plain(layer, FLOAT_MIRRORS[name], as_float32(value))
        if name in CPU_MIRRORS:
            getattr(layer, CPU_MIRRORS[name]).fill_(value)


def output_scales(layer: torch.nn.Module) -> dict[str, float]:
    """The device output scales of an attention layer as Python floats (per head: the largest head's)."""
    return {name: float(getattr(layer, buffer).max()) for name, buffer in OUTPUT_BUFFERS.items()}


def reduce_q_to_kv_heads(q: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Per KV head, the largest q scale of the query heads sharing it (head ``h`` uses KV head
    ``h // (num_heads // num_kv_heads)``) [HEADS-1]: FlashAttention takes one q scale per KV head."""
    flat = q.reshape(-1)
    if flat.numel() % num_kv_heads:
        raise ValueError(f"{flat.numel()} q scales do not split into {num_kv_heads} KV-head groups")
    return flat.reshape(num_kv_heads, -1).amax(dim=1)


def tp_head_scales(scale: torch.Tensor, *, kind: str, total_heads: int, total_kv_heads: int, tp_rank: int,
                   tp_size: int) -> torch.Tensor:
    """The per-head scales tensor-parallel rank ``tp_rank`` of ``tp_size`` holds, from a checkpoint tensor [HEADS-8].

    ``scale`` is the whole checkpoint tensor: ``(total_kv_heads, 1, 1)`` for k and v, ``(total_heads, 1, 1)``
    for q (any of ``head_scale_shapes``). q is first reduced to one scale per KV head
    (``reduce_q_to_kv_heads``), so every kind then has one entry per KV head. Attention shards KV heads over
    the ranks: when ``total_kv_heads >= tp_size`` (``tp_size`` must divide it) rank ``r`` holds KV heads
    ``[r * n, (r + 1) * n)`` with ``n = total_kv_heads // tp_size``; when ``total_kv_heads < tp_size``
    (``total_kv_heads`` must divide ``tp_size``) each KV head is replicated on ``tp_size // total_kv_heads``
    consecutive ranks and rank ``r`` holds the single head ``r // (tp_size // total_kv_heads)``. The result is
    a new ``(n,)`` float32 tensor (``n = 1`` when replicated); anything else raises ``ValueError`` naming the
    numbers. This is vLLM's ``_tp_aware_loader`` (``compressed_tensors.py``
    ``CompressedTensorsKVCacheMethod.create_weights``), strict where it asserts or slices silently.
    """
    if kind not in ("q", "k", "v"):
        raise ValueError(f"kind={kind!r}, but should be 'q', 'k' or 'v'")
    if min(total_heads, total_kv_heads, tp_size) < 1 or total_heads % total_kv_heads:
        raise ValueError(f"total_heads={total_heads}, total_kv_heads={total_kv_heads}, tp_size={tp_size}: "
                         "the head counts must be positive and num_heads a multiple of num_kv_heads")
    if not 0 <= tp_rank < tp_size:
        raise ValueError(f"tp_rank={tp_rank}, but should be in [0, {tp_size})")
    expected = total_heads if kind == "q" else total_kv_heads
    if scale.numel() != expected:
        raise ValueError(f"{kind}_scale has {scale.numel()} elements (shape {tuple(scale.shape)}), but should "
                         f"have {expected}, one per {'query' if kind == 'q' else 'KV'} head")
    per_kv = scale.detach().reshape(-1).float()
    if kind == "q":
        per_kv = reduce_q_to_kv_heads(per_kv, total_kv_heads)
    if total_kv_heads >= tp_size:
        if total_kv_heads % tp_size:
            raise ValueError(f"total_kv_heads={total_kv_heads} does not split evenly over tp_size={tp_size}")
        local = total_kv_heads // tp_size
        return per_kv[tp_rank * local:(tp_rank + 1) * local].clone()
    if tp_size % total_kv_heads:
        raise ValueError(f"tp_size={tp_size} is not a multiple of total_kv_heads={total_kv_heads}, so KV heads "
                         "cannot be replicated evenly")
    replicas = tp_size // total_kv_heads
    return per_kv[tp_rank // replicas:tp_rank // replicas + 1].clone()


class KVCacheMethod:
    """KV-cache scales for one attention layer: per tensor [KVPROC-1..13] or, with ``per_head``, q/k/v per
    attention head as compressed-tensors ``attn_head`` writes them [HEADS-1..7]."""

    loads_weights = True

    def __init__(self, kv_cache_dtype: str, *, per_head: bool = False) -> None:
        self.kv_cache_dtype = kv_cache_dtype
        self.per_head = per_head

    @staticmethod
    def head_counts(layer: torch.nn.Module) -> dict[str, int]:
        """Scale name -> heads of a per-head scale: q has ``num_heads``, k and v ``num_kv_heads`` [HEADS-1]."""
        heads, kv_heads = getattr(layer, "num_heads", None), getattr(layer, "num_kv_heads", None)
        if not isinstance(heads, int) or not isinstance(kv_heads, int):
            raise UnsupportedSchemeError(f"{getattr(layer, 'loadspec_name', type(layer).__name__)}: per-head "
                                         "KV-cache scales need an attention layer with num_heads and num_kv_heads")
        return {"q_scale": heads, "k_scale": kv_heads, "v_scale": kv_heads}

    def create_weights(self, layer: torch.nn.Module, *, device: torch.device | str | None = None) -> None:
        """Give ``layer`` four fresh sentinel scale parameters [KVPROC-1, SCALE-1]; per head, q/k/v are
        ``HeadScaleParameter``s and the q/k/v device scales become ``(num_kv_heads,)`` (once, at build: a
        re-creation finds them in that shape and keeps them, so their ``data_ptr`` never changes) [HEADS-4]."""
        heads = self.head_counts(layer) if self.per_head else {}
        for name in SCALE_NAMES:
            if has_parameter_or_attribute(layer, name):
                delattr(layer, name)
            param = HeadScaleParameter(heads[name], device=device) if name in heads else KVCacheScaleParameter(
                device=device)
            put_parameter(layer, name, param)
        kv_heads = heads.get("k_scale")
        for name in heads:
            buffer = getattr(layer, OUTPUT_BUFFERS[name])
            if kv_heads is not None and tuple(buffer.shape) != (kv_heads,):
                layer.register_buffer(OUTPUT_BUFFERS[name], buffer.new_full((kv_heads,), float(buffer.reshape(-1)[0])),
                                      persistent=True)

    def resolve_per_head(self, layer: torch.nn.Module) -> dict[str, OutputValue]:
        """Per-head outputs: each loaded kind per head, the per-tensor defaults per head otherwise (only k: v = k;
        neither: 1.0; no q: 1.0) [HEADS-1, HEADS-7]; q reduced to KV heads; raises on a bad value [KVPROC-7]."""
        where = getattr(layer, "loadspec_name", type(layer).__name__)
        kv_heads = self.head_counts(layer)["k_scale"]
        present: dict[str, torch.Tensor] = {}
        for name in SCALE_NAMES:
            values = getattr(layer, name).detach().to("cpu", torch.float32).reshape(-1)
            if bool((values == SENTINEL).all()):
                continue
            bad = ~(torch.isfinite(values) & (values > 0))
            if bool(bad.any()):
                raise ScaleValueError(f"{where}.{name}={values.tolist()!r}: a KV-cache scale must be finite and "
                                      "positive (-1.0 marks an unloaded scale) [KVPROC-7]")
            present[name] = values
        device = getattr(layer, OUTPUT_BUFFERS["k_scale"]).device
        ones = torch.ones(kv_heads, dtype=torch.float32, device=device)
        per_kv_head: dict[str, OutputValue] = {name: values.to(device) for name, values in present.items()
                                               if name in ("k_scale", "v_scale")}
        if "q_scale" in present:
            per_kv_head["q_scale"] = reduce_q_to_kv_heads(present["q_scale"], kv_heads).to(device)
        if "prob_scale" in present:
            per_kv_head["prob_scale"] = float(present["prob_scale"])  # per tensor under attn_head too
        return self._with_defaults(per_kv_head, ones, where)

    def resolve(self, layer: torch.nn.Module) -> dict[str, float]:
        """The output scales the loaded parameters call for; raises on bad values [KVPROC-2..9]."""
        loaded = {name: float(registered_tensor(layer, name)) for name in SCALE_NAMES}
        where = getattr(layer, "loadspec_name", type(layer).__name__)
        for name, value in loaded.items():
            if value == SENTINEL:
                continue
            if math.isnan(value) or math.isinf(value) or value <= 0.0:
                raise ScaleValueError(
                    f"{where}.{name}={value!r}: a KV-cache scale must be finite and positive "
                    f"(-1.0 marks an unloaded scale) [KVPROC-7]"
                )
        present: dict[str, OutputValue] = {name: value for name, value in loaded.items() if value != SENTINEL}
        return cast(dict[str, float], self._with_defaults(present, 1.0, where))

    def _with_defaults(self, present: dict[str, OutputValue], one: OutputValue, where: str) -> dict[str, OutputValue]:
        """The output scales from the loaded ones (``present``, by scale name; per head: tensors, prob a float),
        ``one`` standing for 1.0 in the loaded ones' shape [KVPROC-2..9, HEADS-7]: a per-token-head cache takes
        ``one`` for k and v only; an unquantized cache q and prob only (1.0 where not loaded); any other k and v
        each other's value when only one was loaded, else ``one``, with a warning unless e5m2 [KVPROC-3..5]."""
        dtype = self.kv_cache_dtype
        if dtype in PER_TOKEN_HEAD_KV_DTYPES:
            return {"k_scale": one, "v_scale": one}
        resolved = {"q_scale": present.get("q_scale", one), "prob_scale": present.get("prob_scale", 1.0)}
        if dtype in UNQUANTIZED_KV_DTYPES:
            return resolved
        k, v = present.get("k_scale"), present.get("v_scale")
        if k is None and v is None and "e5m2" not in dtype:
            warnings.warn(f"{where}: the checkpoint has no k_scale or v_scale; using KV-cache scale 1.0 for "
                          f"{dtype} [KVPROC-3]", MissingKVScalesWarning, stacklevel=4)
        k = k if k is not None else (v if v is not None else one)
        resolved.update(k_scale=k, v_scale=v if v is not None else k)
        return resolved

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Resolve sentinels into the output scales, then delete the scale parameters [KVPROC-2..13]."""
        if not has_parameter_or_attribute(layer, "q_scale"):
            return  # already processed [KVPROC-12]
        values: dict[str, OutputValue]
        if self.per_head:
            values = self.resolve_per_head(layer)  # raises before anything is written [KVPROC-7]
        else:
            values = dict(self.resolve(layer))  # raises before anything is written [KVPROC-7]
        write_outputs(layer, values)
        for name in SCALE_NAMES:
            delattr(layer, name)
