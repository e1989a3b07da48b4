"""A minimal Llama decoder forward over an exported kernel state, with FP8 KV-cache emulation.

The kernel state is a flat ``name -> tensor`` dict in engine naming (``P`` = ``spec.prefix``):
``P+embed_tokens.weight``, ``P+norm.weight``, ``spec.lm_head_name``, and per layer ``i``
``P+layers.{i}.input_layernorm.weight``, ``...post_attention_layernorm.weight``,
``...self_attn.qkv_proj.weight`` (rows q, k, v), ``...self_attn.o_proj.weight``,
``...mlp.gate_up_proj.weight`` (rows gate, up), ``...mlp.down_proj.weight`` and the 0-d
float32 dequant scales ``...self_attn.attn.{k,v,q,prob}_scale`` (``container`` may be
``mixer``). A linear weight is float, or ``float8_e4m3fn`` with ``<proj>.weight_scale`` of
shape ``()`` or ``(out,)``: ``W = weight.float() * scale``.

With an FP8 KV cache, K (after RoPE) and V are rounded through ``float8_e4m3fn`` with the
loaded scales before attention, so a wrong scale changes the logits. Only K and V are
quantized; ``q_scale`` and ``prob_scale`` are checked but not applied. A k/v scale is 0-d or holds one
value per KV head (compressed-tensors ``attn_head``). A static W8A8 linear (``input_scale`` in
the state) rounds its input through e4m3 with that scale before the matmul.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from loadspec.conformance.e2e.spec_inference import dtype_of
from loadspec.reference.errors import ScaleShapeError, ScaleValueError, UnsupportedSchemeError
from loadspec.reference.spec import ModelSpec, uniform_layers
from loadspec.reference.vocabulary import FP8_DTYPE, FP8_MAX, SCALE_NAMES

FUSED_PROJS = {"self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"), "self_attn.o_proj": ("o_proj",),
               "mlp.gate_up_proj": ("gate_proj", "up_proj"), "mlp.down_proj": ("down_proj",)}
"""Kernel linear (relative to the decoder layer) -> the HF projections fused into it, in row order."""
LINEARS = tuple(FUSED_PROJS)

KVObserver = Callable[[int, torch.Tensor, torch.Tensor], None]
QObserver = Callable[[int, torch.Tensor], None]
LinearObserver = Callable[[str, torch.Tensor], None]


# ------------------------------------------------------------------ names
def linear_name(spec: ModelSpec, index: int, linear: str) -> str:
    """Kernel-state prefix of a linear, e.g. ``model.layers.0.self_attn.qkv_proj`` (container-aware)."""
    if linear.startswith("self_attn."):
        linear = f"{spec.container}.{linear.split('.', 1)[1]}"
    return spec.layer_prefix(index) + linear


def kernel_state_names(spec: ModelSpec) -> list[str]:
    """Every name a kernel state must hold (weight scales excluded: they depend on the dtype)."""
    p = spec.prefix
    names = [f"{p}embed_tokens.weight", f"{p}norm.weight", spec.lm_head_name]
    for i in range(len(spec.layers)):
        names += [f"{spec.layer_prefix(i)}input_layernorm.weight",
                  f"{spec.layer_prefix(i)}post_attention_layernorm.weight"]
        names += [f"{linear_name(spec, i, linear)}.weight" for linear in LINEARS]
        names += [spec.attention_prefix(i) + kind for kind in SCALE_NAMES]
    return names


class ConfigError(ValueError):
    """A ``config.json`` the reference forward cannot build a model from; the message lists every problem."""


MAX_CONFIG_PARAMETERS = 2**40
"""The most parameters ``spec_from_hf_config`` accepts from a config alone (no checkpoint to compare with)."""
MAX_CONFIG_LAYERS = 4096
"""The most decoder layers ``spec_from_hf_config`` builds a ``ModelSpec`` of (real Llamas have a few hundred)."""
_SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
_OPTIONAL_SIZES = ("num_key_value_heads", "head_dim")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def config_problems(config: object) -> list[str]:
    """Every problem of a HF Llama ``config.json`` dict that ``spec_from_hf_config`` reads (empty: none).

    Sizes must be ints (not strings, floats or bools) and > 0 (``num_key_value_heads`` and
    ``head_dim`` may be absent or null); ``tie_word_embeddings`` a real bool; ``rms_norm_eps``
    and ``rope_theta`` finite positive numbers; ``rope_parameters`` and ``quantization_config``
    objects; heads divisible by KV heads, and ``hidden_size`` by the heads when ``head_dim`` is
    not given.
    """
    if not isinstance(config, dict):
        return [f"config is a JSON {type(config).__name__}, not an object"]
    problems = []
    for key in _SIZES + _OPTIONAL_SIZES:
        if key not in config or (key in _OPTIONAL_SIZES and config[key] is None):
            if key in _SIZES:
                problems.append(f"lacks {key!r}")
            continue
        value = config[key]
        if not _is_int(value):
            problems.append(f"{key}={value!r} is a {type(value).__name__}, but should be an int")
        elif value <= 0:
            problems.append(f"{key}={value!r}, but should be > 0")
    if "tie_word_embeddings" in config and not isinstance(config["tie_word_embeddings"], bool):
        value = config["tie_word_embeddings"]
        problems.append(f"tie_word_embeddings={value!r} is a {type(value).__name__}, but should be true or false")
    for key in ("model_type",):
        if key in config and not isinstance(config[key], str):
            problems.append(f"{key}={config[key]!r} is a {type(config[key]).__name__}, but should be a string")
    for key in ("rope_parameters", "quantization_config"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            problems.append(f"{key} is a {type(config[key]).__name__}, but should be an object")
    rope_value = config.get("rope_parameters")
    rope: dict[str, Any] = rope_value if isinstance(rope_value, dict) else {}
    for key, value in (("rms_norm_eps", config.get("rms_norm_eps")), ("rope_theta", config.get("rope_theta")),
                       ("rope_parameters.rope_theta", rope.get("rope_theta"))):
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"{key}={value!r} is a {type(value).__name__}, but should be a number")
        elif not (math.isfinite(value) and value > 0):
            problems.append(f"{key}={value!r}, but should be finite and > 0")
    if "rope_type" in rope and not isinstance(rope["rope_type"], str):
        problems.append(f"rope_parameters.rope_type={rope['rope_type']!r} should be a string")
    if problems:
        return problems
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    kv_heads = config.get("num_key_value_heads") or heads
    if heads % kv_heads:
        problems.append(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    if not config.get("head_dim") and hidden % heads:
        problems.append(f"hidden_size={hidden} is not a multiple of num_attention_heads={heads} (and no head_dim)")
    return problems


def config_parameter_count(config: dict) -> int:
    """How many parameters a model built from a valid ``config`` holds (exact Python ints: nothing allocated)."""
    hidden, heads, vocab = config["hidden_size"], config["num_attention_heads"], config["vocab_size"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    inter = config["intermediate_size"]
    per_layer = (heads + 2 * kv_heads) * head_dim * hidden + hidden * heads * head_dim + 3 * inter * hidden + 2 * hidden
    tied = config.get("tie_word_embeddings", False)
    return vocab * hidden * (1 if tied else 2) + hidden + config["num_hidden_layers"] * per_layer


def spec_from_hf_config(config: dict, *, linear_quant: str | None = None,
                        max_parameters: int | None = MAX_CONFIG_PARAMETERS, **overrides: Any) -> ModelSpec:
    """A ``ModelSpec`` from a HF Llama ``config.json`` dict.

    ``linear_quant`` defaults to what ``quantization_config`` declares (per-tensor or
    per-channel FP8) or ``"none"``; ``overrides`` are ``ModelSpec`` fields. The config is
    validated first (``config_problems``; a ``ConfigError`` lists every problem), and a
    config of more than ``max_parameters`` parameters is refused before anything is built
    (``inspect_checkpoint`` passes a bound from the checkpoint's own tensor headers).
    """
    problems = config_problems(config)
    if not problems and config["num_hidden_layers"] > MAX_CONFIG_LAYERS:
        problems.append(f"num_hidden_layers={config['num_hidden_layers']}, over the {MAX_CONFIG_LAYERS} accepted")
    if not problems and max_parameters is not None and config_parameter_count(config) > max_parameters:
        problems.append(f"the config describes {config_parameter_count(config):,} parameters, over the "
                        f"{max_parameters:,} accepted")
    if problems:
        raise ConfigError("config.json: " + "; ".join(problems))
    if config.get("model_type", "llama") != "llama":
        raise UnsupportedSchemeError(f"model_type={config.get('model_type')!r}: only 'llama' is supported")
    heads = config["num_attention_heads"]
    rope = config.get("rope_parameters") or {}
    theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedSchemeError(f"rope_type={rope['rope_type']!r}: only 'default' RoPE is supported")
    if linear_quant is None:
        linear_quant = _linear_quant_of(config.get("quantization_config"))
    fields = dict(
        layers=uniform_layers(config["num_hidden_layers"], qkv_quant=linear_quant, o_quant=linear_quant,
                              gate_up_quant=linear_quant, down_quant=linear_quant),
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        intermediate_size=config["intermediate_size"],
        tie_embeddings=config.get("tie_word_embeddings", False),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        rope_theta=float(theta),
        params_dtype=dtype_of(config, []),  # the checkpoint's dtype: a bf16 checkpoint is never scored in fp32
    )
    fields.update(overrides)
    return ModelSpec(**fields)


def _linear_quant_of(qconfig: dict | None) -> str:
    """``fp8_per_channel`` or ``fp8_per_tensor`` from ``quantization_config``; a malformed one is a ``ConfigError``."""
    if not qconfig:
        return "none"

    def part(value: object, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"config.json: quantization_config {where} is a {type(value).__name__}, "
                              f"but should be an object")
        return value

    strategy = qconfig.get("weight_strategy")
    if strategy is None and qconfig.get("quant_method") == "compressed-tensors":
        groups = part(qconfig.get("config_groups"), "config_groups")
        first_group = part(next(iter(groups.values()), {}), "config group")
        strategy = part(first_group.get("weights"), "config group weights").get("strategy")
    if strategy is None and qconfig.get("quant_method") == "quark":
        weight = part(part(qconfig.get("global_quant_config"), "global_quant_config").get("weight"),
                      "global_quant_config.weight")
        scheme = weight.get("qscheme", "per_tensor")
        strategy = scheme.removeprefix("per_") if isinstance(scheme, str) else scheme
    if strategy is not None and not isinstance(strategy, str):
        raise ConfigError(f"config.json: quantization_config weight strategy {strategy!r} is not a string")
    linear_quants: dict[str | None, str] = {"channel": "fp8_per_channel"}
    return linear_quants.get(strategy, "fp8_per_tensor")


# ------------------------------------------------------------------ pieces
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama RMSNorm in float32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of shape ``[seq, head_dim]`` in HF's halves layout."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``[..., seq, head_dim]``): ``x*cos + rotate_half(x)*sin``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def fake_quantize_kv(x: torch.Tensor, scale: torch.Tensor | None, kv_cache_dtype: str) -> torch.Tensor:
    """``x`` as it comes back from a KV cache of ``kv_cache_dtype`` written with dequant ``scale``."""
    if kv_cache_dtype == "auto":
        return x
    if kv_cache_dtype == "bfloat16":
        return x.to(torch.bfloat16).float()
    if kv_cache_dtype in ("fp8", "fp8_e4m3"):
        if scale is None:
            raise TypeError(f"kv_cache_dtype={kv_cache_dtype!r} needs a KV-cache scale, got None")
        if scale.numel() > 1:  # one scale per KV head: x is [batch, kv_heads, seq, head_dim] [HEADS-1]
            scale = scale.reshape(1, -1, 1, 1)
        stored = (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        return stored.float() * scale
    raise UnsupportedSchemeError(f"kv_cache_dtype={kv_cache_dtype!r} is not emulated by the reference forward")


def check_kv_scale(name: str, scale: torch.Tensor, *, heads: int | None = None) -> None:
    """Raise unless ``scale`` is finite and positive, and 0-d or (with ``heads``) one value per KV head [HEADS-1]."""
    if scale.dim() != 0 and (heads is None or scale.numel() != heads):
        per_head = "" if heads is None else f" or hold {heads} values (one per KV head)"
        raise ScaleShapeError(f"{name}: KV-cache scale must be 0-d{per_head}, got shape {tuple(scale.shape)}")
    values = scale.detach().float().reshape(-1)
    if not bool(values.isfinite().all()) or bool((values <= 0).any()):
        raise ScaleValueError(f"{name}: KV-cache scale must be finite and > 0, got {values.tolist()}")


def dequantize_weight(weight: torch.Tensor, scale: torch.Tensor | None, *, name: str = "weight") -> torch.Tensor:
    """Float32 value of a linear weight: ``weight.float() * scale`` (per-tensor or per-output-row)."""
    if weight.dtype != FP8_DTYPE:
        return weight.float()
    if scale is None:
        raise ValueError(f"{name}: float8_e4m3fn weight without a weight_scale")
    scale = scale.float()
    if scale.numel() == 1:
        return weight.float() * scale.reshape(())
    if scale.numel() == weight.shape[0]:
        return weight.float() * scale.reshape(-1, 1)
    raise ValueError(f"{name}: weight_scale of shape {tuple(scale.shape)} fits neither per-tensor nor "
                     f"per-channel for weight {tuple(weight.shape)}")


def dequantized_state(state: dict) -> dict:
    """A copy of kernel ``state`` with every FP8 weight replaced by its float32 value (same CPU logits)."""
    out = {}
    for name, tensor in state.items():
        if name.endswith(".weight_scale") and name[: -len("_scale")] in state:
            continue
        if tensor.dtype == FP8_DTYPE:
            tensor = dequantize_weight(tensor, state.get(name + "_scale"), name=name)
        out[name] = tensor
    return out


def _scaled_mm_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    out_features, in_features = weight.shape
    return x.is_cuda and weight.dtype == FP8_DTYPE and in_features % 16 == 0 and out_features % 16 == 0


def static_quantize_input(x: torch.Tensor, input_scale: torch.Tensor) -> torch.Tensor:
    """``x`` rounded through e4m3 with a static activation scale, as a static W8A8 linear sees it [STATIC-1]."""
    scale = input_scale.float().reshape(())
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float() * scale


def scaled_mm_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                     input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """W8A8 on CUDA: the static ``input_scale`` when given, else dynamic per-tensor (or per-token for per-channel
    weights) FP8 activations."""
    rows = x.reshape(-1, x.shape[-1]).float()
    m = rows.shape[0]
    pad = (-m) % 16
    per_channel = scale.numel() > 1
    if input_scale is not None:
        a_scale = input_scale.float().reshape(()).expand(m, 1) if per_channel else input_scale.float().reshape(())
    elif per_channel:
        a_scale = (rows.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    else:
        a_scale = (rows.abs().amax() / FP8_MAX).clamp(min=1e-12)
    a = (rows / a_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    if per_channel:
        a_scale = a_scale.contiguous()
    if pad:
        a = torch.cat([a, a.new_zeros(pad, a.shape[1])])
        if per_channel:
            a_scale = torch.cat([a_scale, a_scale.new_ones(pad, 1)])
    if per_channel:  # rowwise scaling wants bf16 output
        out = torch._scaled_mm(a, weight.t(), scale_a=a_scale.float(), scale_b=scale.float().reshape(1, -1),
                               out_dtype=torch.bfloat16)
    else:
        out = torch._scaled_mm(a, weight.t(), scale_a=a_scale.float().reshape(()),
                               scale_b=scale.float().reshape(()), out_dtype=torch.float32)
    return out[:m].float().reshape(*x.shape[:-1], weight.shape[0])


def _linear(x: torch.Tensor, state: dict, name: str, device: torch.device, paths: Counter,
            observer: LinearObserver | None = None) -> torch.Tensor:
    if observer is not None:
        observer(name, x)
    weight = state[f"{name}.weight"].to(device)
    scale = state.get(f"{name}.weight_scale")
    scale = None if scale is None else scale.to(device)
    input_scale = state.get(f"{name}.input_scale") if weight.dtype == FP8_DTYPE else None
    input_scale = None if input_scale is None else input_scale.to(device)
    if weight.dtype == FP8_DTYPE and scale is not None and _scaled_mm_fits(x, weight):
        paths["scaled_mm" if input_scale is None else "scaled_mm_static_input"] += 1
        return scaled_mm_linear(x, weight, scale, input_scale)
    if input_scale is not None:  # static W8A8: the activation is rounded through e4m3 with the checkpoint's scale
        paths["static_input"] += 1
        x = static_quantize_input(x, input_scale)
    paths["dequant_matmul" if weight.dtype == FP8_DTYPE else "float_matmul"] += 1
    return x.float() @ dequantize_weight(weight, scale, name=f"{name}.weight").t()


# ------------------------------------------------------------------ forward
@torch.no_grad()
def forward_logits(state: dict, spec: ModelSpec, input_ids, *, kv_cache_dtype: str | None = None,
                   device: str | torch.device | None = None, kv_observer: KVObserver | None = None,
                   linear_observer: LinearObserver | None = None, info: dict | None = None,
                   q_observer: QObserver | None = None) -> torch.Tensor:
    """Float32 logits ``[batch, seq, vocab]`` of a causal Llama forward over ``state``.

    ``kv_cache_dtype`` defaults to ``spec.kv_cache_dtype``; ``kv_observer(layer, k, v)`` sees
    post-RoPE K and V before cache quantization, ``q_observer(layer, q)`` post-RoPE Q (what FP8
    attention quantizes with ``q_scale``); ``linear_observer(name, x)`` sees each
    linear's input; ``info`` (a dict) receives which linear path ran (``scaled_mm``,
    ``scaled_mm_static_input``, ``static_input``, ``dequant_matmul``, ``float_matmul``) and how
    often. A static ``input_scale`` in ``state`` is applied (the activation is rounded through
    e4m3 with it [STATIC-1]); without one activations are quantized dynamically on CUDA.
    """
    if spec.attention != "mha":
        raise UnsupportedSchemeError(f"attention={spec.attention!r}: the reference forward implements 'mha' only")
    kv_cache_dtype = spec.kv_cache_dtype if kv_cache_dtype is None else kv_cache_dtype
    device = torch.device(device) if device is not None else state[f"{spec.prefix}embed_tokens.weight"].device
    missing = [n for n in kernel_state_names(spec) if n not in state and not n.endswith(SCALE_NAMES)]
    if missing:
        raise KeyError(f"kernel state lacks {len(missing)} tensors, e.g. {missing[:4]}")
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=device)
    if ids.dim() == 1:
        ids = ids[None]
    batch, seq = ids.shape
    paths: Counter = Counter()

    x = state[f"{spec.prefix}embed_tokens.weight"].to(device)[ids].float()
    cos, sin = rope_cos_sin(torch.arange(seq, device=device), spec.head_dim, spec.rope_theta)
    causal = torch.full((seq, seq), float("-inf"), device=device).triu(1)
    group = spec.num_heads // spec.num_kv_heads
    for i in range(len(spec.layers)):
        lp, ap = spec.layer_prefix(i), spec.attention_prefix(i)
        scales = {}
        for kind in ("k_scale", "v_scale"):  # the scales this forward applies; q and prob are not applied
            if ap + kind in state:
                check_kv_scale(ap + kind, state[ap + kind], heads=spec.num_kv_heads)
                scales[kind] = state[ap + kind].to(device).float()

        h = rms_norm(x, state[f"{lp}input_layernorm.weight"].to(device), spec.rms_norm_eps)
        qkv = _linear(h, state, linear_name(spec, i, "self_attn.qkv_proj"), device, paths, linear_observer)
        q, k, v = qkv.split([spec.q_size, spec.kv_size, spec.kv_size], dim=-1)
        q = q.reshape(batch, seq, spec.num_heads, spec.head_dim).transpose(1, 2)
        k = k.reshape(batch, seq, spec.num_kv_heads, spec.head_dim).transpose(1, 2)
        v = v.reshape(batch, seq, spec.num_kv_heads, spec.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_observer is not None:
            kv_observer(i, k, v)
        if q_observer is not None:
            q_observer(i, q)
        if kv_cache_dtype in ("fp8", "fp8_e4m3"):
            for kind in ("k_scale", "v_scale"):
                if kind not in scales:
                    raise KeyError(f"{ap + kind} is required for kv_cache_dtype={kv_cache_dtype!r}")
        k = fake_quantize_kv(k, scales.get("k_scale"), kv_cache_dtype)
        v = fake_quantize_kv(v, scales.get("v_scale"), kv_cache_dtype)
        k = k.repeat_interleave(group, dim=1)  # query head j reads kv head j // group
        v = v.repeat_interleave(group, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(spec.head_dim) + causal
        attn = torch.softmax(scores, dim=-1) @ v
        attn = attn.transpose(1, 2).reshape(batch, seq, spec.q_size)
        x = x + _linear(attn, state, linear_name(spec, i, "self_attn.o_proj"), device, paths, linear_observer)

        h = rms_norm(x, state[f"{lp}post_attention_layernorm.weight"].to(device), spec.rms_norm_eps)
        gate_up = _linear(h, state, linear_name(spec, i, "mlp.gate_up_proj"), device, paths, linear_observer)
        gate, up = gate_up.chunk(2, dim=-1)
        x = x + _linear(torch.nn.functional.silu(gate) * up, state, linear_name(spec, i, "mlp.down_proj"),
                        device, paths, linear_observer)

    x = rms_norm(x, state[f"{spec.prefix}norm.weight"].to(device), spec.rms_norm_eps)
    logits = x @ state[spec.lm_head_name].to(device).float().t()
    if info is not None:
        info.update(linear_paths=dict(paths), kv_cache_dtype=kv_cache_dtype, device=str(device))
    return logits


def continuation_ids(tokenizer, text: str, prefix: str) -> tuple[list[int], int]:
    """Token ids of ``text`` and how many of them are ``prefix``'s tokens."""
    ids = list(tokenizer(text)["input_ids"])
    prefix_ids = list(tokenizer(prefix)["input_ids"]) if prefix else []
    if ids[:len(prefix_ids)] != prefix_ids:
        raise ValueError(f"text {text!r} does not start with the tokens of prefix {prefix!r}")
    start = max(len(prefix_ids), 1)  # the first token has nothing to be predicted from
    if start >= len(ids):
        raise ValueError(f"text {text!r} has no tokens after prefix {prefix!r}")
    return ids, start


def perplexity(state: dict, spec: ModelSpec, tokenizer, text: str, prefix: str = "", *,
               kv_cache_dtype: str | None = None, device: str | torch.device | None = None,
               info: dict | None = None) -> float:
    """Perplexity of ``text``'s tokens after ``prefix`` (the prefix's tokens are not scored)."""
    ids, start = continuation_ids(tokenizer, text, prefix)
    logits = forward_logits(state, spec, ids, kv_cache_dtype=kv_cache_dtype, device=device, info=info)[0]
    targets = torch.tensor(ids[start:], device=logits.device)
    nll = torch.nn.functional.cross_entropy(logits[start - 1:-1].float(), targets)
    return float(torch.exp(nll))


__all__ = ["forward_logits", "perplexity", "continuation_ids", "spec_from_hf_config", "config_problems",
           "config_parameter_count", "ConfigError", "MAX_CONFIG_PARAMETERS", "MAX_CONFIG_LAYERS", "kernel_state_names",
           "linear_name", "fake_quantize_kv", "static_quantize_input", "dequantize_weight", "dequantized_state",
           "scaled_mm_linear", "check_kv_scale", "rms_norm", "rope_cos_sin", "apply_rope", "FUSED_PROJS", "LINEARS"]
