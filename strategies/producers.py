"""Checkpoint producers: how each one names and shapes KV-cache scales, and its config.

Facts from ``shared/notes/field-bugs.md`` section 2 and ``vllm-loader.md`` section 5.
Names are relative to the attention container (``...self_attn.`` or ``...mixer.``).
This is the one producer table: it drives the ``NAMES`` rules, ``checkpoint_layouts``,
the synthetic checkpoints and the E2E quantizer. The producer-side FP8 quantization
(``quantize_weight``) lives here too, written independently of the reference loader's
processing so that a bug in one cannot cancel out in the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from loadspec.reference.vocabulary import FP8_DTYPE, FP8_MAX

WEIGHT_STRATEGIES = ("tensor", "channel")
"""How a producer scales FP8 weights: one scale per tensor, or one per output row."""


@dataclass(frozen=True)
class Producer:
    """One checkpoint layout: scale names per kind, their shape and dtype, the config it writes."""

    id: str
    quant_method: str
    scale_names: dict[str, str]  # kind -> name template relative to the container; absent kinds are not written
    scale_shape: tuple[int, ...]
    scale_dtype: str  # "float32" or "model" (the checkpoint's parameter dtype)
    rule: str
    fused_kv: bool = False  # writes one scale for k and v (legacy kv_scale)
    kind_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # kinds whose shape is not scale_shape
    channel_scale_keepdim: bool = True  # per-channel weight scales as (out, 1); False: (out,)
    calibrated_q: bool = False  # writes a calibrated q scale (FP8 attention: Q amax / 448), not an uncalibrated 1.0

    def channel_scale(self, scale: torch.Tensor) -> torch.Tensor:
        """A per-channel weight scale ``(out, 1)`` (``quantize_weight``) in the shape this producer writes: ``(out, 1)``
        (compressed-tensors ``ChannelQuantScaleParameter`` of shape ``(out, 1)``) or ``(out,)`` (Quark; vLLM's
        and SGLang's ``QuarkW8A8Fp8.create_weights`` make it 1-d)."""
        return scale if self.channel_scale_keepdim else scale.reshape(-1)

    def scale_name(self, container_prefix: str, kind: str) -> str | None:
        """The checkpoint name of scale ``kind`` under ``container_prefix`` (ends with a dot)."""
        template = self.scale_names.get(kind)
        return None if template is None else container_prefix + template

    def scale_tensor(self, value: float, model_dtype: torch.dtype, kind: str | None = None) -> torch.Tensor:
        """``value`` shaped and typed as this producer writes it (the scale of ``kind`` where it has its own shape)."""
        dtype = torch.float32 if self.scale_dtype == "float32" else model_dtype
        shape = self.kind_shapes.get(kind, self.scale_shape) if kind is not None else self.scale_shape
        return torch.full(shape, value, dtype=dtype)


PRODUCERS: dict[str, Producer] = {
    p.id: p
    for p in (
        Producer("compressed-tensors", "compressed-tensors",
                 {"q": "q_scale", "k": "k_scale", "v": "v_scale"}, (1,), "model", "NAMES-1"),
        Producer("compressed-tensors-legacy", "compressed-tensors",
                 {"q": "q_proj.output_scale", "k": "k_proj.output_scale", "v": "v_proj.output_scale"},
                 (1,), "model", "NAMES-2"),
        Producer("modelopt", "modelopt", {"k": "k_proj.k_scale", "v": "v_proj.v_scale"}, (), "float32", "NAMES-3"),
        Producer("modelopt-fp8-attention", "modelopt",
                 {"q": "q_proj.q_scale", "k": "k_proj.k_scale", "v": "v_proj.v_scale"}, (), "float32", "NAMES-15",
                 kind_shapes={"q": (1,)}, calibrated_q=True),
        Producer("quark", "quark",
                 {"q": "q_proj.output_scale", "k": "k_proj.output_scale", "v": "v_proj.output_scale",
                  "prob": "prob_output_scale"}, (), "float32", "NAMES-4", channel_scale_keepdim=False),
        Producer("autofp8", "fp8", {"k": "k_scale", "v": "v_scale"}, (), "float32", "NAMES-5"),
        Producer("legacy-kv-scale", "fp8", {"k": "kv_scale"}, (), "float32", "NAMES-6", fused_kv=True),
        Producer("fused-qkv", "compressed-tensors", {"k": "qkv_proj.k_scale", "v": "qkv_proj.v_scale"},
                 (1,), "model", "NAMES-7"),
        Producer("bare-prob-scale", "fp8",
                 {"k": "k_scale", "v": "v_scale", "q": "q_scale", "prob": "prob_scale"}, (), "float32", "NAMES-11"),
        Producer("canonical", "fp8",
                 {"q": "attn.q_scale", "k": "attn.k_scale", "v": "attn.v_scale", "prob": "attn.prob_scale"},
                 (), "float32", "NAMES-12"),
    )
}

MIRRORED_VERSIONS: dict[str, str] = {
    "compressed-tensors": "llm-compressor 0.14.0.1 / compressed-tensors 0.19.0, run on this CPU "
                          "(make real-checkpoints; reports/e2e/real-tools/*.json): <attn>.k_scale/v_scale (1,) in "
                          "the model dtype, (num_kv_heads, 1, 1) with kv_cache_scheme attn_head; weight_scale and "
                          "input_scale in the model dtype, (1,) per tensor, (out, 1) per channel; a kv_cache_scheme "
                          "alone writes no q_scale",
    "compressed-tensors-legacy": "compressed-tensors before kv_cache_scheme moved the scales onto attention "
                                 "(k_proj/v_proj output_scale, vLLM's mapper); not run here",
    "fused-qkv": "llm-compressor on models with a fused qkv_proj (vllm#32199); not run here",
    "modelopt": "NVIDIA ModelOpt unified HF export (modelopt/torch/export, shared/notes/field-bugs.md section 2): "
                "k_proj.k_scale/v_proj.v_scale 0-d float32; needs CUDA, not run here",
    "modelopt-fp8-attention": "NVIDIA TensorRT-Edge-LLM quantize.py (commit 9fccfef4, "
                              "_collect_attention_q_scales_for_export): ModelOpt's export plus <attn>.q_proj.q_scale, "
                              "float32 (1,) = Q-BMM amax / maxbound, next to ModelOpt's 0-d "
                              "k_proj.k_scale/v_proj.v_scale (FP8 attention); needs CUDA, not run here",
    "quark": "AMD Quark (amd-quark 0.12.post1 kv_cache_group export, field-bugs.md section 2): 0-d float32 "
             "scales, per-channel weight_scale (out,) (the shape vLLM 0.33.0's and SGLang's QuarkW8A8Fp8 create); "
             "not run here",
    "autofp8": "AutoFP8 505a7ed (archived; auto_fp8/quantize.py): 0-d float32 k_scale/v_scale; not run here",
    "legacy-kv-scale": "AutoFP8 before #25 (2024-07-23) and AMD/TGI tools: one kv_scale; not run here",
    "bare-prob-scale": "vLLM's mapper rule for bare q/prob scales (NAMES-11); no producer run",
    "canonical": "the engine's own names (NAMES-12), e.g. a state dict saved from vLLM; no producer run",
}
"""Producer id -> the tool version whose output the layout mirrors, and whether it was run here to check it."""


def quantize_weight(values: torch.Tensor, *, strategy: str = "tensor") -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 e4m3 weight and float32 dequant scale as producers write them: ``amax / 448``.

    The scale has shape ``()`` for ``strategy="tensor"`` and ``(out, 1)`` for ``"channel"``;
    ``weight.float() * scale`` approximates ``values``.
    """
    if strategy not in WEIGHT_STRATEGIES:
        raise ValueError(f"weight strategy={strategy!r}, but should be one of {WEIGHT_STRATEGIES}")
    w = values.float()
    amax = w.abs().amax() if strategy == "tensor" else w.abs().amax(dim=1, keepdim=True)
    scale = (amax / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale.float()


_KV_SCHEME = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}


STATIC_CT_INPUTS = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}
"""llm-compressor's ``FP8`` preset (compressed-tensors 0.12): static per-tensor input activations [STATIC-1]."""


def quantization_config(producer_id: str, *, weight_strategy: str = "tensor",
                        ignored: tuple[str, ...] = (), activation_scheme: str = "dynamic",
                        kv_scale_strategy: str = "tensor") -> dict[str, Any]:
    """The ``config.json`` ``quantization_config`` that ``producer_id`` writes.

    ``weight_strategy`` is ``"tensor"`` or ``"channel"``; ``ignored`` lists module
    names left unquantized; ``activation_scheme="static"`` writes static W8A8 (every FP8 linear has an
    ``input_scale``) in the producer's own words [STATIC-1]; ModelOpt FP8 is static whatever is asked.
    ``kv_scale_strategy="attn_head"`` writes compressed-tensors' per-head ``kv_cache_scheme`` [HEADS-1]
    (other formats have per-tensor KV-cache scales only, so it is ignored there).
    """
    producer = PRODUCERS[producer_id]
    method = producer.quant_method
    static = activation_scheme == "static"
    if method == "compressed-tensors":
        weights = {"num_bits": 8, "type": "float", "strategy": weight_strategy, "dynamic": False, "symmetric": True}
        inputs = dict(STATIC_CT_INPUTS) if static else {"num_bits": 8, "type": "float", "strategy": "token",
                                                        "dynamic": True, "symmetric": True}
        return {
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": inputs}},
            "ignore": list(ignored),
            "kv_cache_scheme": dict(_KV_SCHEME, strategy=kv_scale_strategy),
        }
    if method == "modelopt":
        return {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8",
                "exclude_modules": list(ignored), "kv_cache_scheme": {"dynamic": False, "num_bits": 8, "type": "float"}}
    if method == "quark":
        # Quark writes input_tensors for dynamic activations too (is_dynamic true), and each layer_quant_config entry
        # repeats weight and input_tensors beside its output_tensors: vLLM's QuarkConfig._is_fp8_w8a8 treats a layer
        # without an input_tensors dict as unquantized, and get_quant_method reads the entry's weight.
        fp8 = {"dtype": "fp8_e4m3", "qscheme": "per_tensor", "is_dynamic": False}
        layer = {"weight": dict(fp8, qscheme=f"per_{weight_strategy}"),
                 "input_tensors": dict(fp8, is_dynamic=not static), "output_tensors": None, "bias": None}
        return {"quant_method": "quark", "export": {"kv_cache_group": ["*k_proj", "*v_proj"], "pack_method": "reorder"},
                "global_quant_config": layer,
                "layer_quant_config": {"*k_proj": dict(layer, output_tensors=dict(fp8)),
                                       "*v_proj": dict(layer, output_tensors=dict(fp8))},
                "exclude": list(ignored)}
    return {"quant_method": "fp8", "activation_scheme": "static" if static else "dynamic", "kv_cache_scheme": "static",
            "weight_strategy": weight_strategy, "ignored_layers": list(ignored)}


__all__ = ["Producer", "PRODUCERS", "WEIGHT_STRATEGIES", "STATIC_CT_INPUTS", "quantization_config", "quantize_weight",
           "MIRRORED_VERSIONS"]
