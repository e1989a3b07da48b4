"""Model specs: a plain, JSON-serializable description of a decoder model to build.

A ``ModelSpec`` is what ``loadspec.strategies.layer_graphs()`` draws, what an
adapter builds with its own layer classes, and what a reproducer writes to disk.
Parameter names follow vLLM's Llama: fused ``qkv_proj`` and ``gate_up_proj``,
attention state under ``<container>.attn``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from loadspec.reference.vocabulary import (
    ACTIVATION_SCHEMES,
    ATTENTION_KINDS,
    CONTAINERS,
    FORMAT_ACTIVATION_SCHEMES,
    KV_CACHE_DTYPES,
    KV_SCALE_STRATEGIES,
    LINEAR_QUANTS,
    PARAM_DTYPES,
    PER_HEAD_KV_METHODS,
    PER_TOKEN_HEAD_KV_DTYPES,
    QUANTIZED_KV_DTYPES,
    UNQUANTIZED_KV_DTYPES,
)


@dataclass(frozen=True)
class LayerSpec:
    """One decoder layer: the quant scheme of each linear and the registration order."""

    qkv_quant: str = "none"
    o_quant: str = "none"
    gate_up_quant: str = "none"
    down_quant: str = "none"
    attention_first: bool = False
    sinks: bool = False  # the attention layer owns ``sinks`` [num_heads] besides its KV-cache scales [RELOAD-15]

    def linear_quants(self) -> dict[str, str]:
        """Quant scheme by linear name relative to the decoder layer."""
        return {
            "qkv_proj": self.qkv_quant,
            "o_proj": self.o_quant,
            "gate_up_proj": self.gate_up_quant,
            "down_proj": self.down_quant,
        }


@dataclass(frozen=True)
class ModelSpec:
    """A small decoder model: sizes, per-layer quant schemes, KV-cache dtype, naming."""

    layers: tuple[LayerSpec, ...] = (LayerSpec(),)
    vocab_size: int = 32
    hidden_size: int = 16
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 4
    intermediate_size: int = 24
    attention: str = "mha"
    kv_lora_rank: int = 8
    qk_rope_head_dim: int = 2
    tie_embeddings: bool = False
    kv_cache_dtype: str = "fp8_e4m3"
    quant_method: str | None = "fp8"
    activation_scheme: str | None = None  # "dynamic", "static", None: the format's (static_input_scales) [STATIC-1]
    kv_scale_strategy: str = "tensor"  # "attn_head": q/k/v KV-cache scales per head (compressed-tensors) [HEADS-1]
    container: str = "self_attn"
    wrapper: tuple[str, ...] = ()
    params_dtype: str = "float32"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a ModelSpec needs at least one layer")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention={self.attention!r}, but should be one of {ATTENTION_KINDS}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype={self.kv_cache_dtype!r}, but should be one of {KV_CACHE_DTYPES}")
        if self.container not in CONTAINERS:
            raise ValueError(f"container={self.container!r}, but should be one of {CONTAINERS}")
        if self.params_dtype not in PARAM_DTYPES:
            raise ValueError(f"params_dtype={self.params_dtype!r}, but should be one of {PARAM_DTYPES}")
        if self.activation_scheme is not None:
            if self.activation_scheme not in ACTIVATION_SCHEMES:
                raise ValueError(f"activation_scheme={self.activation_scheme!r}, but should be None or one of "
                                 f"{ACTIVATION_SCHEMES}")
            fixed = FORMAT_ACTIVATION_SCHEMES.get(self.quant_method or "")
            if self.quant_method is None or fixed not in (None, self.activation_scheme):
                raise ValueError(f"activation_scheme={self.activation_scheme!r} does not exist for quant_method="
                                 f"{self.quant_method!r} (its only scheme: {fixed or 'none'}) [STATIC-1]")
        if self.kv_scale_strategy not in KV_SCALE_STRATEGIES:
            raise ValueError(f"kv_scale_strategy={self.kv_scale_strategy!r}, but should be one of "
                             f"{KV_SCALE_STRATEGIES}")
        if self.kv_scale_strategy != "tensor" and (self.quant_method not in PER_HEAD_KV_METHODS
                                                   or self.attention != "mha"):
            raise ValueError(f"kv_scale_strategy={self.kv_scale_strategy!r} needs MHA/GQA attention under "
                             f"{' or '.join(PER_HEAD_KV_METHODS)}, not {self.attention} under "
                             f"{self.quant_method!r} [HEADS-1]")
        for layer in self.layers:
            for name, quant in layer.linear_quants().items():
                if quant not in LINEAR_QUANTS:
                    raise ValueError(f"{name} quant={quant!r}, but should be one of {LINEAR_QUANTS}")
                if quant != "none" and self.quant_method is None:
                    raise ValueError(f"{name} is {quant} but the model has no quant_method")

    # ------------------------------------------------------------------ names
    @property
    def prefix(self) -> str:
        """Dotted prefix of the decoder stack, e.g. ``model.`` or ``language_model.model.``."""
        return "".join(f"{w}." for w in self.wrapper) + "model."

    @property
    def lm_head_name(self) -> str:
        """Name of the output projection's weight."""
        return "".join(f"{w}." for w in self.wrapper) + "lm_head.weight"

    def layer_prefix(self, index: int) -> str:
        """Prefix of decoder layer ``index``, e.g. ``model.layers.0.``."""
        return f"{self.prefix}layers.{index}."

    def attention_prefix(self, index: int) -> str:
        """Prefix of the attention layer holding the KV-cache scales."""
        return f"{self.layer_prefix(index)}{self.container}.attn."

    @property
    def kv_cache_quantized(self) -> bool:
        """Whether the KV-cache dtype stores quantized values [KVPROC-2..9]."""
        return self.kv_cache_dtype not in UNQUANTIZED_KV_DTYPES

    @property
    def static_input_scales(self) -> bool:
        """Whether every FP8 linear takes a static activation scale ``input_scale`` [STATIC-1].

        Decided by ``activation_scheme`` (what the checkpoint's config says: compressed-tensors
        ``input_activations.dynamic: false``, Quark ``input_tensors.is_dynamic: false``, Fp8Config
        ``activation_scheme: static``); ``None`` takes the format's only scheme (ModelOpt FP8: static), else dynamic.
        """
        if self.quant_method is None:
            return False
        scheme = self.activation_scheme or FORMAT_ACTIVATION_SCHEMES.get(self.quant_method, "dynamic")
        return scheme == "static"

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    # ------------------------------------------------------------- serialize
    def to_json(self) -> str:
        """The spec as JSON, for reproducers."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Inverse of ``to_json``."""
        raw = json.loads(text)
        raw["layers"] = tuple(LayerSpec(**layer) for layer in raw["layers"])
        raw["wrapper"] = tuple(raw["wrapper"])
        return cls(**raw)

    def with_(self, **changes: Any) -> ModelSpec:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


def uniform_layers(count: int, **layer_fields: Any) -> tuple[LayerSpec, ...]:
    """``count`` identical ``LayerSpec``s."""
    return tuple(LayerSpec(**layer_fields) for _ in range(count))


DEFAULT_SPEC = ModelSpec(layers=uniform_layers(2, qkv_quant="fp8_per_tensor", down_quant="fp8_per_channel"))

__all__ = ["LayerSpec", "ModelSpec", "DEFAULT_SPEC", "uniform_layers", "ATTENTION_KINDS", "CONTAINERS",
           "KV_CACHE_DTYPES", "LINEAR_QUANTS", "PARAM_DTYPES", "QUANTIZED_KV_DTYPES", "PER_TOKEN_HEAD_KV_DTYPES",
           "UNQUANTIZED_KV_DTYPES"]
