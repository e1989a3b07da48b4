"""Attention layers (MHA/GQA and MLA) holding the KV-cache scales, optionally attention sinks.

Both are ``AttentionLayerBase``: the loader processes them after every other
layer [ORDER-1, ORDER-3]. MLA's processing absorbs ``kv_b_proj``'s processed
weight into ``W_UK_T``/``W_UV``, so it is wrong if it runs before that linear.
With ``sinks=True`` the layer also owns ``sinks`` (one learned logit per head, as
gpt-oss's attention has), a parameter besides its scales that every reload must keep
[RELOAD-15].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from loadspec.reference.kv_cache import OUTPUT_BUFFERS, KVCacheMethod, reset_default_scales, set_default_scales
from loadspec.reference.loaders import default_weight_loader

if TYPE_CHECKING:
    from loadspec.reference.layers.linear import Linear
    from loadspec.reference.quant_config import QuantConfig


class AttentionLayerBase(torch.nn.Module):
    """Marker base: layers the loader defers until every other layer is processed."""

    quant_method: KVCacheMethod | None = None
    # Output buffers, registered by set_default_scales [KVPROC-11].
    _q_scale: torch.Tensor
    _k_scale: torch.Tensor
    _v_scale: torch.Tensor
    _prob_scale: torch.Tensor

    def _init_kv_cache(self, *, kv_cache_dtype: str, quant_config: QuantConfig | None,
                       device: torch.device | str | None) -> None:
        set_default_scales(self, device=device)
        self.kv_cache_dtype = kv_cache_dtype
        method = None if quant_config is None else quant_config.kv_cache_method(kv_cache_dtype)
        if method is not None:
            if kv_cache_dtype == "fp8_e5m2":
                raise ValueError("fp8_e5m2 kv-cache is not supported with fp8 checkpoints [KVPROC-10]")
            method.create_weights(self, device=device)
        self.quant_method = method

    def _init_sinks(self, num_heads: int, *, dtype: torch.dtype, device: torch.device | str | None) -> None:
        """Register ``sinks`` ``[num_heads]``: a parameter of the layer besides its KV-cache scales [RELOAD-15]."""
        sinks = torch.nn.Parameter(torch.empty(num_heads, dtype=dtype, device=device), requires_grad=False)
        sinks.weight_loader = default_weight_loader  # type: ignore[attr-defined]  # vLLM: loaders ride on the Parameter
        self.sinks = sinks

    def reads(self) -> tuple[torch.nn.Module, ...]:
        """Other layers whose processed tensors this layer's processing reads (none; MLA: ``kv_b_proj``)."""
        return ()

    def process_weights_after_loading(self) -> None:
        """Layer-level hook: without a KV-cache method the output scales are 1.0 [KVPROC-9]."""
        if self.quant_method is None:
            reset_default_scales(self)

    def export(self) -> dict[str, torch.Tensor]:
        """Kernel state: the four output scales as ``q_scale`` ... ``prob_scale``, and ``sinks`` if it has them."""
        state = {name: getattr(self, buffer).detach() for name, buffer in OUTPUT_BUFFERS.items()}
        sinks = self._parameters.get("sinks")
        if sinks is not None:
            state["sinks"] = sinks.detach()
        return state


class Attention(AttentionLayerBase):
    """MHA or GQA attention state: KV-cache scales and their host mirrors."""

    def __init__(self, *, num_heads: int, num_kv_heads: int, head_dim: int, kv_cache_dtype: str,
                 quant_config: QuantConfig | None = None, device: torch.device | str | None = None,
                 sinks: bool = False, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self._init_kv_cache(kv_cache_dtype=kv_cache_dtype, quant_config=quant_config, device=device)
        if sinks:
            self._init_sinks(num_heads, dtype=dtype, device=device)


class MLAAttention(AttentionLayerBase):
    """Multi-head latent attention state: KV-cache scales plus ``kv_b_proj`` absorbed into two buffers."""

    W_UK_T: torch.Tensor  # buffers, registered in __init__
    W_UV: torch.Tensor

    def __init__(self, *, num_heads: int, head_dim: int, kv_lora_rank: int, kv_b_proj: Linear,
                 kv_cache_dtype: str, quant_config: QuantConfig | None = None,
                 device: torch.device | str | None = None, sinks: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.kv_lora_rank = num_heads, head_dim, kv_lora_rank
        self._kv_b_proj = (kv_b_proj,)  # a reference, not a submodule
        self._init_kv_cache(kv_cache_dtype=kv_cache_dtype, quant_config=quant_config, device=device)
        if sinks:
            self._init_sinks(num_heads, dtype=dtype, device=device)
        shape_k = (num_heads, kv_lora_rank, head_dim)
        self.register_buffer("W_UK_T", torch.zeros(shape_k, device=device), persistent=False)
        self.register_buffer("W_UV", torch.zeros(shape_k, device=device), persistent=False)

    def reads(self) -> tuple[torch.nn.Module, ...]:
        """``kv_b_proj``: its processed weight is absorbed here, so it must be written before this layer."""
        return self._kv_b_proj

    def process_weights_after_loading(self) -> None:
        """Absorb the processed ``kv_b_proj`` weight into ``W_UK_T`` and ``W_UV`` in place."""
        super().process_weights_after_loading()
        kv_b = self._kv_b_proj[0]
        weight = kv_b.quant_method.dequantized_weight(kv_b)  # [heads * 2 * head_dim, rank]
        weight = weight.reshape(self.num_heads, 2 * self.head_dim, self.kv_lora_rank)
        self.W_UK_T.copy_(weight[:, : self.head_dim, :].transpose(1, 2))
        self.W_UV.copy_(weight[:, self.head_dim :, :].transpose(1, 2))

    def export(self) -> dict[str, torch.Tensor]:
        """Kernel state: the output scales plus ``W_UK_T`` and ``W_UV``."""
        return {**super().export(), "W_UK_T": self.W_UK_T.detach(), "W_UV": self.W_UV.detach()}
