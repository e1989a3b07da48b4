"""Synthetic checkpoints for a ``ModelSpec``: HF (unfused) names, random values, a producer's scale layout.

Quantized with ``producers.quantize_weight``, never with the reference loader's own code.
"""

from __future__ import annotations

import torch

from loadspec.reference.spec import ModelSpec
from loadspec.reference.vocabulary import SCALE_KINDS, torch_dtype
from loadspec.strategies.producers import PRODUCERS, Producer, quantize_weight

KVValues = dict[str, float | None]  # kind ("q", "k", "v", "prob") -> float, or None to omit


def hf_linears(spec: ModelSpec, index: int) -> dict[str, tuple[int, int, str]]:
    """Checkpoint linear names of decoder layer ``index`` -> ``(out, in, quant scheme)``."""
    layer = spec.layers[index]
    c = f"{spec.layer_prefix(index)}{spec.container}."
    m = f"{spec.layer_prefix(index)}mlp."
    hidden, heads, head_dim = spec.hidden_size, spec.num_heads, spec.head_dim
    if spec.attention == "mla":
        rope, rank = spec.qk_rope_head_dim, spec.kv_lora_rank
        attn = {f"{c}q_proj": (heads * (head_dim + rope), hidden, layer.qkv_quant),
                f"{c}kv_a_proj_with_mqa": (rank + rope, hidden, layer.qkv_quant),
                f"{c}kv_b_proj": (heads * 2 * head_dim, rank, layer.qkv_quant)}
    else:
        attn = {f"{c}q_proj": (spec.q_size, hidden, layer.qkv_quant),
                f"{c}k_proj": (spec.kv_size, hidden, layer.qkv_quant),
                f"{c}v_proj": (spec.kv_size, hidden, layer.qkv_quant)}
    return {**attn, f"{c}o_proj": (hidden, heads * head_dim, layer.o_quant),
            f"{m}gate_proj": (spec.intermediate_size, hidden, layer.gate_up_quant),
            f"{m}up_proj": (spec.intermediate_size, hidden, layer.gate_up_quant),
            f"{m}down_proj": (hidden, spec.intermediate_size, layer.down_quant)}


def fp8_weight(values: torch.Tensor, scheme: str, *, producer: Producer) -> dict[str, torch.Tensor]:
    """``weight`` (e4m3) and ``weight_scale`` for float ``values`` under ``scheme`` (amax / 448).

    Per-tensor scales take the producer's ``scale_shape``; per-channel ones its ``channel_scale`` shape
    (``(out, 1)``, Quark ``(out,)``).
    """
    weight, scale = quantize_weight(values, strategy="tensor" if scheme == "fp8_per_tensor" else "channel")
    return {"weight": weight, "weight_scale": scale.reshape(producer.scale_shape) if scheme == "fp8_per_tensor"
            else producer.channel_scale(scale)}


def synthetic_checkpoint(spec: ModelSpec, *, producer: str = "canonical", seed: int = 0,
                         kv_scales: KVValues | None = None, scale_dtype: torch.dtype | None = None,
                         linear_scale_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A full checkpoint for ``spec`` with random weights and KV scales in ``producer``'s layout.

    ``kv_scales`` gives each scale kind's value (``None`` or absent omits it);
    the default gives k=0.5, v=0.25 and omits q and prob. ``scale_dtype``
    overrides the producer's KV-scale dtype, ``linear_scale_dtype`` the dtype of every
    ``weight_scale`` and ``input_scale`` [DTYPE-2].
    """
    gen = torch.Generator().manual_seed(seed)
    dtype = torch_dtype(spec.params_dtype)
    out: dict[str, torch.Tensor] = {}

    def rand(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * scale)

    out[f"{spec.prefix}embed_tokens.weight"] = rand(spec.vocab_size, spec.hidden_size).to(dtype)
    out[f"{spec.prefix}norm.weight"] = (1 + rand(spec.hidden_size)).to(dtype)
    if not spec.tie_embeddings:
        out[spec.lm_head_name] = rand(spec.vocab_size, spec.hidden_size).to(dtype)
    producer_info = PRODUCERS[producer]
    tensor_scale_shape = producer_info.scale_shape
    # input_scale as the producer writes it (weight_scale: float32, from quantize_weight), unless overridden
    input_scale_dtype = linear_scale_dtype or (torch.float32 if producer_info.scale_dtype == "float32" else dtype)
    for index in range(len(spec.layers)):
        lp = spec.layer_prefix(index)
        out[f"{lp}input_layernorm.weight"] = (1 + rand(spec.hidden_size)).to(dtype)
        out[f"{lp}post_attention_layernorm.weight"] = (1 + rand(spec.hidden_size)).to(dtype)
        if spec.attention == "mla":
            out[f"{lp}{spec.container}.kv_a_layernorm.weight"] = (1 + rand(spec.kv_lora_rank)).to(dtype)
        if spec.layers[index].sinks:  # one learned logit per head [RELOAD-15]
            out[f"{spec.attention_prefix(index)}sinks"] = rand(spec.num_heads, scale=1.0).to(dtype)
        for name, (rows, cols, scheme) in hf_linears(spec, index).items():
            values = rand(rows, cols)
            if scheme == "none":
                out[f"{name}.weight"] = values.to(dtype)
            else:
                for suffix, tensor in fp8_weight(values, scheme, producer=producer_info).items():
                    out[f"{name}.{suffix}"] = tensor
                if linear_scale_dtype is not None:
                    out[f"{name}.weight_scale"] = out[f"{name}.weight_scale"].to(linear_scale_dtype)
                if spec.static_input_scales:  # decided by the config, not the method's name [STATIC-1]
                    out[f"{name}.input_scale"] = (0.01 + rand(1, scale=0.01).abs()).reshape(
                        tensor_scale_shape).to(input_scale_dtype)
        out.update(kv_scale_tensors(spec, index, producer=producer, kv_scales=kv_scales, scale_dtype=scale_dtype))
    return out


def kv_scale_tensors(spec: ModelSpec, index: int, *, producer: str, kv_scales: KVValues | None = None,
                     scale_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The KV-cache scale tensors of layer ``index`` in ``producer``'s names, shapes and dtypes."""
    if spec.quant_method is None:
        return {}
    values = {"k": 0.5, "v": 0.25} if kv_scales is None else dict(kv_scales)
    info = PRODUCERS[producer]
    if info.fused_kv and values.get("k") is not None:
        values["k"] = max(v for v in (values.get("k"), values.get("v")) if v is not None)
    container = f"{spec.layer_prefix(index)}{spec.container}."
    model_dtype = torch_dtype(spec.params_dtype)
    out = {}
    for kind in SCALE_KINDS:
        name, value = info.scale_name(container, kind), values.get(kind)
        if name is None or value is None:
            continue
        tensor = info.scale_tensor(value, model_dtype, kind)
        out[name] = tensor.to(scale_dtype) if scale_dtype is not None else tensor
    return out
