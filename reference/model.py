"""Build a reference model from a ``ModelSpec``: vLLM-style fused layers in checkpoint format [LOAD-1, RELOAD-1].

Processing after loading and the export live in ``lifecycle``."""

from __future__ import annotations

from typing import TypedDict

import torch

from loadspec.reference.layers.attention import Attention, AttentionLayerBase, MLAAttention
from loadspec.reference.layers.basic import LMHead, RMSNorm, VocabEmbedding
from loadspec.reference.layers.linear import Linear
from loadspec.reference.mapper import ShardId, WeightsMapper
from loadspec.reference.quant_config import QuantConfig
from loadspec.reference.spec import LayerSpec, ModelSpec
from loadspec.reference.vocabulary import torch_dtype


def checkpoint_mapper(spec: ModelSpec) -> WeightsMapper:
    """The model's own mapper: HF projections stacked into fused engine linears (MHA/GQA only)."""
    stacked: dict[str, tuple[str, ShardId]] = {".gate_proj.": (".gate_up_proj.", 0), ".up_proj.": (".gate_up_proj.", 1)}
    if spec.attention == "mha":
        stacked = {".q_proj.": (".qkv_proj.", "q"), ".k_proj.": (".qkv_proj.", "k"),
                   ".v_proj.": (".qkv_proj.", "v"), **stacked}
    return WeightsMapper(stacked=stacked)


class Placement(TypedDict):
    """Keyword arguments of every layer: parameter dtype and device."""

    dtype: torch.dtype
    device: torch.device | str | None


class LinearOptions(Placement):
    """Keyword arguments of every ``Linear``: placement and static activation scales."""

    static_input: bool


class _KVOptions(TypedDict):
    kv_cache_dtype: str
    quant_config: QuantConfig | None
    device: torch.device | str | None


def linear_options(spec: ModelSpec, *, dtype: torch.dtype, device: torch.device | str | None) -> LinearOptions:
    """Keyword arguments of every ``Linear`` in a ``spec`` model: static activation scales when the spec's config
    says so (``spec.static_input_scales``, never the method's name) [STATIC-1]."""
    return LinearOptions(dtype=dtype, device=device, static_input=spec.static_input_scales)


class AttentionBlock(torch.nn.Module):
    """The attention container (``self_attn`` or ``mixer``): projections plus ``attn``."""

    def __init__(self, spec: ModelSpec, layer: LayerSpec, quant_config: QuantConfig | None, *, dtype: torch.dtype,
                 device: torch.device | str | None) -> None:
        super().__init__()
        kw = linear_options(spec, dtype=dtype, device=device)
        kv = _KVOptions(kv_cache_dtype=spec.kv_cache_dtype, quant_config=quant_config, device=device)
        hidden, heads, head_dim = spec.hidden_size, spec.num_heads, spec.head_dim
        projections: dict[str, torch.nn.Module]
        attn: AttentionLayerBase
        if spec.attention == "mla":
            rope, rank = spec.qk_rope_head_dim, spec.kv_lora_rank
            projections = {
                "q_proj": Linear(hidden, {0: heads * (head_dim + rope)}, scheme=layer.qkv_quant, **kw),
                "kv_a_proj_with_mqa": Linear(hidden, {0: rank + rope}, scheme=layer.qkv_quant, **kw),
                "kv_a_layernorm": RMSNorm(rank, eps=spec.rms_norm_eps, dtype=dtype, device=device),
            }
            kv_b_proj = projections["kv_b_proj"] = Linear(rank, {0: heads * 2 * head_dim}, scheme=layer.qkv_quant, **kw)
            attn = MLAAttention(num_heads=heads, head_dim=head_dim, kv_lora_rank=rank, kv_b_proj=kv_b_proj,
                                sinks=layer.sinks, dtype=dtype, **kv)
        else:
            projections = {"qkv_proj": Linear(hidden, {"q": spec.q_size, "k": spec.kv_size, "v": spec.kv_size},
                                              scheme=layer.qkv_quant, **kw)}
            attn = Attention(num_heads=heads, num_kv_heads=spec.num_kv_heads, head_dim=head_dim,
                             sinks=layer.sinks, dtype=dtype, **kv)
        projections["o_proj"] = Linear(heads * head_dim, {0: hidden}, scheme=layer.o_quant, **kw)
        if layer.attention_first:
            self.attn = attn
        for name, module in projections.items():
            self.add_module(name, module)
        if not layer.attention_first:
            self.attn = attn


class MLP(torch.nn.Module):
    """Gated MLP: fused ``gate_up_proj`` and ``down_proj``."""

    def __init__(self, spec: ModelSpec, layer: LayerSpec, *, dtype: torch.dtype,
                 device: torch.device | str | None) -> None:
        super().__init__()
        size = spec.intermediate_size
        kw = linear_options(spec, dtype=dtype, device=device)
        self.gate_up_proj = Linear(spec.hidden_size, {0: size, 1: size}, scheme=layer.gate_up_quant, **kw)
        self.down_proj = Linear(size, {0: spec.hidden_size}, scheme=layer.down_quant, **kw)


class DecoderLayer(torch.nn.Module):
    """One decoder layer: norms, attention container, MLP."""

    def __init__(self, spec: ModelSpec, layer: LayerSpec, quant_config: QuantConfig | None, *, dtype: torch.dtype,
                 device: torch.device | str | None) -> None:
        super().__init__()
        kw = Placement(dtype=dtype, device=device)
        self.input_layernorm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps, **kw)
        self.add_module(spec.container, AttentionBlock(spec, layer, quant_config, **kw))
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps, **kw)
        self.mlp = MLP(spec, layer, **kw)


class DecoderModel(torch.nn.Module):
    """Embedding, decoder layers, final norm."""

    def __init__(self, spec: ModelSpec, quant_config: QuantConfig | None, *, dtype: torch.dtype,
                 device: torch.device | str | None) -> None:
        super().__init__()
        kw = Placement(dtype=dtype, device=device)
        self.embed_tokens = VocabEmbedding(spec.vocab_size, spec.hidden_size, **kw)
        self.layers = torch.nn.ModuleList(DecoderLayer(spec, layer, quant_config, **kw) for layer in spec.layers)
        self.norm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps, **kw)


class CausalLM(torch.nn.Module):
    """``model`` plus ``lm_head``; one per wrapper level."""

    def __init__(self, spec: ModelSpec, quant_config: QuantConfig | None, *, dtype: torch.dtype,
                 device: torch.device | str | None) -> None:
        super().__init__()
        self.model = DecoderModel(spec, quant_config, dtype=dtype, device=device)
        tie = self.model.embed_tokens if spec.tie_embeddings else None
        self.lm_head = LMHead(spec.vocab_size, spec.hidden_size, tie_to=tie, dtype=dtype, device=device)


class ReferenceModel(torch.nn.Module):
    """The root module: holds ``quant_config`` and the checkpoint mapper, and the spec it was built from.

    Every parameter except the FP8 weights and the float32 scales is built in ``spec.params_dtype``, the
    checkpoint's dtype (``quant_config.checkpoint_dtype_of`` reads it from ``config.json``) [DTYPE-1]."""

    loadspec_order: list[str]
    """Module names in the order the last load, dummy load or reload processed them [ORDER-1..4]."""

    def __init__(self, spec: ModelSpec, *, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.quant_config = (QuantConfig(spec.quant_method, kv_scale_strategy=spec.kv_scale_strategy)
                             if spec.quant_method else None)
        self.mapper = checkpoint_mapper(spec)
        inner = CausalLM(spec, self.quant_config, dtype=torch_dtype(spec.params_dtype), device=device)
        if spec.wrapper:
            holder: torch.nn.Module = self
            for name in spec.wrapper[:-1]:
                holder.add_module(name, torch.nn.Module())
                holder = getattr(holder, name)
            holder.add_module(spec.wrapper[-1], inner)
        else:
            self.model, self.lm_head = inner.model, inner.lm_head
        name_tensors(self)


def name_tensors(model: torch.nn.Module) -> None:
    """Tag every parameter and module with its qualified name, for error messages."""
    for module_name, module in model.named_modules():
        module.loadspec_name = module_name
        for name, param in module.named_parameters(recurse=False):
            param.loadspec_name = f"{module_name}.{name}" if module_name else name


def build_model(spec: ModelSpec, *, device: torch.device | str | None = None) -> ReferenceModel:
    """Build the model of ``spec`` in checkpoint format (uninitialized) on ``device``."""
    return ReferenceModel(spec, device=torch.device(device) if device is not None else None)
