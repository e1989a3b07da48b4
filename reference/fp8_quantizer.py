"""FP8 (e4m3) quantization of a HF Llama checkpoint, with KV scales calibrated on real activations.

``quantize_checkpoint`` writes FP8 q/k/v/o/gate/up/down weights (per-tensor or per-output-row
scales, ``amax/448``) under HF's unfused names, KV-cache scales in the layout of one producer
from ``reference.producers``, and ``config.json`` with that producer's ``quantization_config``.
``kernel_state_from_checkpoint`` reads such a checkpoint (or a float one) back into the
fused kernel-state dict that ``reference.llama_forward`` runs, without the reference loader.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from loadspec.reference.errors import ScaleShapeError, UnsupportedSchemeError
from loadspec.reference.llama_forward import FP8_MAX, forward_logits, linear_name, spec_from_hf_config
from loadspec.reference.model import STATIC_INPUT_METHODS
from loadspec.reference.producers import PRODUCERS, quantization_config
from loadspec.reference.spec import ModelSpec

DEFAULT_CALIBRATION_TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Paris is the capital and largest city of France, with about two million residents. "
    "Water boils at one hundred degrees Celsius at sea level. "
    "In 1969, Neil Armstrong became the first person to walk on the Moon. "
    "Photosynthesis turns light energy into chemical energy stored in sugar. "
    "She opened the window, and the cool morning air filled the quiet room."
)
ATTN_PROJS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJS = ("gate_proj", "up_proj", "down_proj")
WEIGHT_STRATEGIES = ("tensor", "channel")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json")
SUPPORTED_METHODS = ("fp8", "compressed-tensors", "modelopt", "quark")
_IGNORED_NAMES = ("rotary_emb.inv_freq",)
FUSED_PROJS = {"self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"), "self_attn.o_proj": ("o_proj",),
               "mlp.gate_up_proj": ("gate_proj", "up_proj"), "mlp.down_proj": ("down_proj",)}


# ------------------------------------------------------------------ checkpoint I/O
def load_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``config.json`` and all safetensors tensors of a HF checkpoint dir (single file or sharded)."""
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors file")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return config, state


def _hf_proj(index: int, proj: str) -> str:
    block = "self_attn" if proj in ATTN_PROJS else "mlp"
    return f"model.layers.{index}.{block}.{proj}"


# ------------------------------------------------------------------ quantization
def quantize_weight(weight: torch.Tensor, *, strategy: str = "tensor") -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 e4m3 weight and its float32 dequant scale: shape ``()`` (tensor) or ``(out,)`` (channel)."""
    if strategy not in WEIGHT_STRATEGIES:
        raise ValueError(f"weight_strategy={strategy!r}, but should be one of {WEIGHT_STRATEGIES}")
    w = weight.float()
    amax = w.abs().amax() if strategy == "tensor" else w.abs().amax(dim=1)
    scale = (amax / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    divisor = scale if strategy == "tensor" else scale[:, None]
    return (w / divisor).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale.float()


def calibrate_kv_scales(state: dict, spec: ModelSpec, tokenizer, *,
                        calibration_text: str = DEFAULT_CALIBRATION_TEXT) -> list[tuple[float, float]]:
    """Per layer ``(k_scale, v_scale)`` = amax of post-RoPE K and of V over the text, divided by 448.

    ``state`` is a kernel state (float or FP8 weights); the forward runs with an unquantized cache.
    """
    amax = [[0.0, 0.0] for _ in spec.layers]

    def observe(layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        amax[layer][0] = max(amax[layer][0], float(k.abs().amax()))
        amax[layer][1] = max(amax[layer][1], float(v.abs().amax()))

    forward_logits(state, spec, tokenizer(calibration_text)["input_ids"], kv_cache_dtype="auto", kv_observer=observe)
    return [(k / FP8_MAX, v / FP8_MAX) for k, v in amax]


def calibrate_input_scales(state: dict, spec: ModelSpec, tokenizer, *,
                           calibration_text: str = DEFAULT_CALIBRATION_TEXT) -> dict[str, float]:
    """Static activation scales: kernel linear name -> amax of its input over the text, divided by 448."""
    amax: dict[str, float] = {}

    def observe(name: str, x: torch.Tensor) -> None:
        amax[name] = max(amax.get(name, 0.0), float(x.abs().amax()))

    forward_logits(state, spec, tokenizer(calibration_text)["input_ids"], kv_cache_dtype="auto",
                   linear_observer=observe)
    return {name: value / FP8_MAX for name, value in amax.items()}


def kv_scale_tensors(producer_id: str, scales: list[tuple[float, float]], *, model_dtype: torch.dtype,
                     container: str = "self_attn", q_value: float = 1.0,
                     prob_value: float = 1.0) -> dict[str, torch.Tensor]:
    """The KV-scale tensors ``producer_id`` writes for per-layer ``(k, v)`` scales."""
    producer = PRODUCERS[producer_id]
    out = {}
    for index, (k, v) in enumerate(scales):
        prefix = f"model.layers.{index}.{container}."
        values = {"k": max(k, v) if producer.fused_kv else k, "v": v, "q": q_value, "prob": prob_value}
        for kind, value in values.items():
            name = producer.scale_name(prefix, kind)
            if name is not None:
                out[name] = producer.scale_tensor(value, model_dtype)
    return out


def quantize_checkpoint(src_dir: str | Path, dst_dir: str | Path, *, producer_id: str,
                        weight_strategy: str = "tensor", calibration_text: str = DEFAULT_CALIBRATION_TEXT,
                        scale_multiplier: float = 1.0, tokenizer=None) -> dict:
    """Write an FP8 copy of HF Llama checkpoint ``src_dir`` into ``dst_dir`` in ``producer_id``'s layout.

    KV scales are calibrated on ``calibration_text`` and multiplied by ``scale_multiplier``
    before writing; ``tokenizer`` defaults to ``src_dir``'s. Returns
    ``{"kv_scales": [(k, v), ...] (as written), "names": [...]}``.
    """
    from safetensors.torch import save_file

    if producer_id not in PRODUCERS:
        raise ValueError(f"producer_id={producer_id!r}, but should be one of {sorted(PRODUCERS)}")
    if weight_strategy not in WEIGHT_STRATEGIES:
        raise ValueError(f"weight_strategy={weight_strategy!r}, but should be one of {WEIGHT_STRATEGIES}")
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    config, hf_state = load_checkpoint(src_dir)
    if config.get("quantization_config"):
        raise ValueError(f"{src_dir} is already quantized "
                         f"({config['quantization_config'].get('quant_method')!r}); give a float checkpoint")
    spec = spec_from_hf_config(config, linear_quant="none", kv_cache_dtype="auto")
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(src_dir))
    float_state = kernel_state_from_tensors(hf_state, config, spec, source=str(src_dir))
    calibrated = calibrate_kv_scales(float_state, spec, tokenizer, calibration_text=calibration_text)
    scales = [(k * scale_multiplier, v * scale_multiplier) for k, v in calibrated]

    producer = PRODUCERS[producer_id]
    model_dtype = hf_state["model.embed_tokens.weight"].dtype
    per_tensor_shape = (1,) if producer.quant_method == "compressed-tensors" else ()
    input_scales = (calibrate_input_scales(float_state, spec, tokenizer, calibration_text=calibration_text)
                    if producer.quant_method in STATIC_INPUT_METHODS else {})
    input_scale_of = {f"{_hf_proj(i, proj)}.weight": input_scales[linear_name(spec, i, fused)]
                      for i in range(len(spec.layers)) for fused, projs in FUSED_PROJS.items() for proj in projs
                      if input_scales}
    out: dict[str, torch.Tensor] = {}
    proj_names = {f"{_hf_proj(i, p)}.weight" for i in range(len(spec.layers)) for p in ATTN_PROJS + MLP_PROJS}
    for name, tensor in hf_state.items():
        if name not in proj_names:
            out[name] = tensor.contiguous()
            continue
        weight, scale = quantize_weight(tensor, strategy=weight_strategy)
        out[name] = weight.contiguous()
        out[name[: -len("weight")] + "weight_scale"] = (
            scale.reshape(per_tensor_shape) if weight_strategy == "tensor" else scale.reshape(-1, 1)
        ).contiguous()
        if name in input_scale_of:
            out[name[: -len("weight")] + "input_scale"] = torch.tensor(input_scale_of[name]).reshape(per_tensor_shape)
    out.update(kv_scale_tensors(producer_id, scales, model_dtype=model_dtype))

    dst_dir.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst_dir / "model.safetensors"), metadata={"format": "pt"})
    config = dict(config, quantization_config=quantization_config(
        producer_id, weight_strategy=weight_strategy, ignored=("lm_head",)))
    (dst_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    for file in TOKENIZER_FILES:
        if (src_dir / file).is_file():
            shutil.copyfile(src_dir / file, dst_dir / file)
    return {"kv_scales": scales, "names": sorted(out)}


# ------------------------------------------------------------------ reading back
def check_quantization_config(qconfig: dict | None) -> None:
    """Raise ``UnsupportedSchemeError`` unless ``qconfig`` is absent or an FP8 e4m3 scheme read here."""
    if not qconfig:
        return
    method = qconfig.get("quant_method")
    if method not in SUPPORTED_METHODS:
        raise UnsupportedSchemeError(f"quantization_config quant_method={method!r} is not supported; "
                                     f"supported: {SUPPORTED_METHODS}")
    if method == "compressed-tensors":
        for group, scheme in (qconfig.get("config_groups") or {}).items():
            weights = scheme.get("weights") or {}
            if weights.get("type") != "float" or weights.get("num_bits") != 8:
                raise UnsupportedSchemeError(f"compressed-tensors group {group!r} weights "
                                             f"{weights.get('type')}/{weights.get('num_bits')} bits: only float/8")
            if weights.get("strategy") not in WEIGHT_STRATEGIES:
                raise UnsupportedSchemeError(f"compressed-tensors weight strategy {weights.get('strategy')!r}")
    elif method == "modelopt" and qconfig.get("quant_algo") != "FP8":
        raise UnsupportedSchemeError(f"modelopt quant_algo={qconfig.get('quant_algo')!r}: only 'FP8'")
    elif method == "quark":
        weight = (qconfig.get("global_quant_config") or {}).get("weight") or {}
        if weight.get("dtype") != "fp8_e4m3":
            raise UnsupportedSchemeError(f"quark weight dtype={weight.get('dtype')!r}: only 'fp8_e4m3'")


def fuse_shards(shards: list[tuple[str, torch.Tensor, torch.Tensor | None]]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row-concatenate ``(name, weight, scale)`` shards; per-tensor FP8 ones are re-quantized to the max scale."""
    fp8 = [w.dtype == torch.float8_e4m3fn for _, w, _ in shards]
    if not any(fp8):
        return torch.cat([w for _, w, _ in shards]), None
    if not all(fp8) or any(s is None for _, _, s in shards):
        raise ValueError(f"shards {[n for n, _, _ in shards]} mix FP8 and float weights (or lack weight_scale)")
    if all(s.numel() == 1 for _, _, s in shards):
        s_max = max(s.float().reshape(()) for _, _, s in shards)
        parts = [(w.float() * s.float().reshape(()) / s_max).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
                 for _, w, s in shards]
        return torch.cat(parts), s_max.reshape(()).float()
    for name, w, s in shards:
        if s.numel() != w.shape[0]:
            raise ValueError(f"{name}_scale: shape {tuple(s.shape)} is neither per-tensor nor per-channel "
                             f"for weight {tuple(w.shape)}")
    return torch.cat([w for _, w, _ in shards]), torch.cat([s.float().reshape(-1) for _, _, s in shards])


def _kv_scale_templates() -> dict[str, set[str]]:
    templates: dict[str, set[str]] = {}
    for producer in PRODUCERS.values():
        for kind, template in producer.scale_names.items():
            templates.setdefault(kind, set()).add(template)
    return templates


def _read_kv_scales(hf: dict, container_prefix: str, used: set) -> dict[str, torch.Tensor]:
    """The checkpoint's ``{kind: 0-d float32}`` scales under ``container_prefix``, any producer layout."""
    found: dict[str, torch.Tensor] = {}
    for kind, templates in _kv_scale_templates().items():
        values = {}
        for template in sorted(templates):
            name = container_prefix + template
            if name in hf:
                tensor = hf[name]
                if tensor.numel() != 1:
                    raise ScaleShapeError(f"{name}: KV-cache scale must have one element, "
                                          f"got shape {tuple(tensor.shape)}")
                values[name] = tensor.float().reshape(())
                used.add(name)
        legacy = [n for n in values if n.endswith(".kv_scale")]
        if legacy:  # one fused scale serves k and v, unless the checkpoint also has a v scale
            found.setdefault("v", values[legacy[0]])
        if len({float(v) for v in values.values()}) > 1:
            raise ValueError(f"conflicting {kind} scales in the checkpoint: "
                             f"{ {n: float(v) for n, v in values.items()} }")
        if values:
            found[kind] = next(iter(values.values()))
    return found


def kernel_state_from_checkpoint(path: str | Path, spec: ModelSpec, *,
                                 missing_kv_scales: str = "error") -> dict[str, torch.Tensor]:
    """The fused kernel state (``reference.llama_forward`` naming) of a float or FP8 HF Llama checkpoint dir.

    q/k/v and gate/up are fused; per-tensor FP8 shards are re-quantized to the max shard
    scale. Missing k/v scales raise ``ValueError`` when ``spec.kv_cache_quantized`` unless
    ``missing_kv_scales="ones"``; missing q/prob scales are 1.0.
    """
    config, hf = load_checkpoint(path)
    return kernel_state_from_tensors(hf, config, spec, missing_kv_scales=missing_kv_scales, source=str(path))


def kernel_state_from_tensors(hf: dict[str, torch.Tensor], config: dict, spec: ModelSpec, *,
                              missing_kv_scales: str = "error", source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """``kernel_state_from_checkpoint`` for tensors and a ``config.json`` dict already in memory."""
    if missing_kv_scales not in ("error", "ones"):
        raise ValueError(f"missing_kv_scales={missing_kv_scales!r}, but should be 'error' or 'ones'")
    check_quantization_config(config.get("quantization_config"))
    if config["num_hidden_layers"] != len(spec.layers):
        raise ValueError(f"{source}: {config['num_hidden_layers']} layers but the spec has {len(spec.layers)}")
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise KeyError(f"{source}: checkpoint lacks {name}")
        used.add(name)
        return hf[name]

    def shard(name: str) -> tuple[str, torch.Tensor, torch.Tensor | None]:
        scale = f"{name}.weight_scale"
        if scale in hf:
            used.add(scale)
        return f"{name}.weight", take(f"{name}.weight"), hf.get(scale)

    state: dict[str, torch.Tensor] = {}
    p = spec.prefix
    state[f"{p}embed_tokens.weight"] = take("model.embed_tokens.weight")
    state[f"{p}norm.weight"] = take("model.norm.weight")
    if "lm_head.weight" in hf:
        state[spec.lm_head_name] = take("lm_head.weight")
    elif spec.tie_embeddings or config.get("tie_word_embeddings"):
        state[spec.lm_head_name] = state[f"{p}embed_tokens.weight"]
    else:
        raise KeyError(f"{source}: checkpoint lacks lm_head.weight and the embeddings are not tied")

    missing = []
    for i in range(len(spec.layers)):
        lp = spec.layer_prefix(i)
        state[f"{lp}input_layernorm.weight"] = take(f"model.layers.{i}.input_layernorm.weight")
        state[f"{lp}post_attention_layernorm.weight"] = take(f"model.layers.{i}.post_attention_layernorm.weight")
        for fused, projs in FUSED_PROJS.items():
            weight, scale = fuse_shards([shard(_hf_proj(i, proj)) for proj in projs])
            name = linear_name(spec, i, fused)
            state[f"{name}.weight"] = weight
            if scale is not None:
                state[f"{name}.weight_scale"] = scale
            input_scales = [take(f"{_hf_proj(i, proj)}.input_scale") for proj in projs
                            if f"{_hf_proj(i, proj)}.input_scale" in hf]
            if input_scales:  # static activation scales (ModelOpt): the largest shard's
                state[f"{name}.input_scale"] = max(s.float().reshape(()) for s in input_scales)
        scales = _read_kv_scales(hf, f"model.layers.{i}.self_attn.", used)
        for kind in ("k", "v", "q", "prob"):
            if kind not in scales:
                if kind in ("k", "v") and spec.kv_cache_quantized and missing_kv_scales == "error":
                    missing.append(f"model.layers.{i}.self_attn.*{kind}_scale")
                scales[kind] = torch.tensor(1.0)
            state[f"{spec.attention_prefix(i)}{kind}_scale"] = scales[kind].float().reshape(())
    if missing:
        raise ValueError(f"{source}: no KV-cache scales {missing[:4]}{' ...' if len(missing) > 4 else ''} "
                         f"({len(missing)} missing) for kv_cache_dtype={spec.kv_cache_dtype!r}; an engine would "
                         f"use 1.0 (pass missing_kv_scales='ones' to do the same)")
    unknown = sorted(n for n in hf if n not in used and not n.endswith(_IGNORED_NAMES))
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} checkpoint tensors not understood, e.g. {unknown[:4]}")
    return state


__all__ = ["quantize_checkpoint", "calibrate_kv_scales", "kernel_state_from_checkpoint", "kernel_state_from_tensors",
           "quantize_weight",
           "fuse_shards", "kv_scale_tensors", "calibrate_input_scales", "load_checkpoint", "check_quantization_config",
           "DEFAULT_CALIBRATION_TEXT"]
