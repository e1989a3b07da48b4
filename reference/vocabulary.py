"""The contract's vocabulary: every name, dtype and constant that more than one module uses, defined once.

Everything else in ``loadspec`` (the reference, the strategies, the suite, the adapters,
the E2E tooling) imports these instead of spelling them again. Facts from
``shared/notes/vllm-loader.md`` (vLLM at ``fe4c5dcd4``: ``attention/layer.py``,
``quantization/kv_cache.py``, ``quantization/utils/fp8_utils.py``).
"""

from __future__ import annotations

import torch

# ------------------------------------------------------------------ KV-cache scales
SCALE_KINDS = ("q", "k", "v", "prob")
"""The four KV-cache scale kinds, in the order the contract lists them [SCALE-1, NAMES-1..14]."""

SCALE_NAMES = tuple(f"{kind}_scale" for kind in SCALE_KINDS)
"""Canonical parameter names of the scales under ``<container>.attn.`` [NAMES-12]."""

SENTINEL = -1.0
"""The value a scale parameter is created with, meaning "not loaded" [SCALE-1, KVPROC-2]."""

OUTPUT_BUFFERS = {name: f"_{name}" for name in SCALE_NAMES}
"""Scale name -> the attention layer's device buffer the kernels read [KVPROC-2, RELOAD-1]."""

FLOAT_MIRRORS = {name: f"_{name}_float" for name in SCALE_NAMES}
"""Scale name -> the Python-float host mirror [KVPROC-11]."""

CPU_MIRRORS = {name: f"_{name}_cpu" for name in ("k_scale", "v_scale")}
"""Scale name -> the CPU-tensor host mirror (k and v only) [KVPROC-11]."""

HEAD_KINDS = ("q", "k", "v")
"""The scale kinds compressed-tensors ``attn_head`` writes per head; ``prob`` stays per tensor [HEADS-1]."""

PER_HEAD_SCALES = tuple(f"{kind}_scale" for kind in HEAD_KINDS)
"""Their parameter names [HEADS-1]."""


def scale_name(kind: str) -> str:
    """The canonical parameter name of scale ``kind`` (``"k"`` -> ``"k_scale"``)."""
    if kind not in SCALE_KINDS:
        raise ValueError(f"kind={kind!r}, but should be one of {SCALE_KINDS}")
    return f"{kind}_scale"


# ------------------------------------------------------------------ FP8
FP8_DTYPE = torch.float8_e4m3fn
"""The FP8 weight and KV-cache dtype of every scheme the contract covers (OCP e4m3, "fn")."""

FP8_MAX = float(torch.finfo(FP8_DTYPE).max)
"""Largest finite e4m3fn value (448.0): scales are ``amax / FP8_MAX``."""

# ------------------------------------------------------------------ model specs
LINEAR_QUANTS = ("none", "fp8_per_tensor", "fp8_per_channel")
"""Quant schemes of one linear layer in a ``ModelSpec``."""

ATTENTION_KINDS = ("mha", "mla")
CONTAINERS = ("self_attn", "mixer")
"""Attention containers: ``self_attn`` (Llama-like) and ``mixer`` (hybrid models) [NAMES-13, NAMES-14]."""

QUANTIZED_KV_DTYPES = ("fp8", "fp8_e4m3", "fp8_e5m2")
PER_TOKEN_HEAD_KV_DTYPES = ("int8_per_token_head", "fp8_per_token_head", "int4_per_token_head")
UNQUANTIZED_KV_DTYPES = ("auto", "bfloat16")
KV_CACHE_DTYPES = UNQUANTIZED_KV_DTYPES + QUANTIZED_KV_DTYPES + PER_TOKEN_HEAD_KV_DTYPES

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""A spec's ``params_dtype`` name -> torch dtype."""

PARAM_DTYPES = tuple(TORCH_DTYPES)
"""The ``params_dtype`` names a ``ModelSpec`` accepts."""

# ------------------------------------------------------------------ quantization configs
QUANT_METHODS = ("fp8", "compressed-tensors", "modelopt", "quark")
"""``quantization_config.quant_method`` values the contract covers [NAMES-8]."""

ACTIVATION_SCHEMES = ("dynamic", "static")
"""How FP8 linears quantize their input: per token at run time, or with the checkpoint's ``input_scale`` [STATIC-1]."""

FORMAT_ACTIVATION_SCHEMES = {"modelopt": "static"}
"""Quant formats with a single activation scheme: ModelOpt FP8 checkpoints are always static W8A8 (vLLM's
``ModelOptFp8Config`` has no dynamic variant). A ``ModelSpec`` whose ``activation_scheme`` is ``None`` takes its
format's entry here, else ``"dynamic"`` [STATIC-1]."""

KV_SCALE_STRATEGIES = ("tensor", "attn_head")
"""KV-cache scale granularity: one scale per tensor, or one per attention head (compressed-tensors
``kv_cache_scheme.strategy: attn_head``) [HEADS-1]."""

PER_CHANNEL_METHODS = ("compressed-tensors", "quark")
"""Quant formats whose config can state per-channel FP8 weight scales: compressed-tensors
``weights.strategy: channel`` and Quark ``weight.qscheme: per_channel``. vLLM's ``Fp8Config`` has per-tensor and
block scales only, ModelOpt ``FP8`` per-tensor only; the reference builds per-channel linears under any format,
a real producer does not write them."""

PER_HEAD_KV_METHODS = ("compressed-tensors",)
"""Quant formats whose config can ask for per-head KV-cache scales (only compressed-tensors' ``kv_cache_scheme``
has a ``strategy``) [HEADS-1]."""


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a spec's ``params_dtype`` name."""
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"params_dtype={name!r}, but should be one of {PARAM_DTYPES}") from None


__all__ = ["SCALE_KINDS", "SCALE_NAMES", "SENTINEL", "OUTPUT_BUFFERS", "FLOAT_MIRRORS", "CPU_MIRRORS", "HEAD_KINDS",
           "PER_HEAD_SCALES", "scale_name",
           "FP8_DTYPE", "FP8_MAX", "LINEAR_QUANTS", "ATTENTION_KINDS", "CONTAINERS", "QUANTIZED_KV_DTYPES",
           "PER_TOKEN_HEAD_KV_DTYPES", "UNQUANTIZED_KV_DTYPES", "KV_CACHE_DTYPES", "PARAM_DTYPES", "TORCH_DTYPES",
           "QUANT_METHODS", "torch_dtype", "ACTIVATION_SCHEMES",
           "FORMAT_ACTIVATION_SCHEMES", "KV_SCALE_STRATEGIES", "PER_HEAD_KV_METHODS", "PER_CHANNEL_METHODS"]
