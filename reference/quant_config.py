"""Quantization configs: which cache-scale mapper and KV-cache method a checkpoint's config calls for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from loadspec.reference.cache_scale_mappers import cache_scale_mapper
from loadspec.reference.errors import UnsupportedSchemeError
from loadspec.reference.kv_cache import KVCacheMethod
from loadspec.reference.mapper import WeightsMapper
from loadspec.reference.vocabulary import (
    FORMAT_ACTIVATION_SCHEMES,
    KV_SCALE_STRATEGIES,
    PARAM_DTYPES,
    PER_HEAD_KV_METHODS,
    QUANT_METHODS,
)


@dataclass(frozen=True)
class QuantConfig:
    """The engine-side view of ``config.json``'s ``quantization_config``."""

    quant_method: str
    kv_scale_strategy: str = "tensor"  # "attn_head": compressed-tensors per-head KV-cache scales [HEADS-1]

    def __post_init__(self) -> None:
        if self.quant_method not in QUANT_METHODS:
            raise UnsupportedSchemeError(
                f"quantization_config.quant_method={self.quant_method!r} is not supported; "
                f"supported: {', '.join(QUANT_METHODS)}")
        check_kv_scale_strategy(self.kv_scale_strategy)
        if self.kv_scale_strategy != "tensor" and self.quant_method not in PER_HEAD_KV_METHODS:
            raise UnsupportedSchemeError(f"kv_cache_scheme strategy {self.kv_scale_strategy!r} exists for "
                                         f"{', '.join(PER_HEAD_KV_METHODS)} only, not {self.quant_method!r}")

    def get_cache_scale_mapper(self) -> WeightsMapper:
        """Every config maps every producer's scale names [NAMES-1..13]."""
        return cache_scale_mapper()

    def kv_cache_method(self, kv_cache_dtype: str) -> KVCacheMethod:
        """The KV-cache method for any attention layer, MHA/GQA and MLA alike [NAMES-8]; per head under
        ``attn_head`` [HEADS-1]."""
        return KVCacheMethod(kv_cache_dtype, per_head=self.kv_scale_strategy == "attn_head")


def quant_config_from_dict(config: dict[str, Any] | None) -> QuantConfig | None:
    """Parse ``quantization_config``; unsupported KV-cache schemes raise ``UnsupportedSchemeError``."""
    if not config:
        return None
    method = config.get("quant_method")
    kv_scheme = config.get("kv_cache_scheme")
    if isinstance(kv_scheme, dict):
        if kv_scheme.get("type", "float") != "float" or kv_scheme.get("num_bits", 8) != 8:
            raise UnsupportedSchemeError(f"kv_cache_scheme {kv_scheme!r}: only 8-bit float KV caches are supported")
        if kv_scheme.get("strategy", "tensor") != "tensor":
            raise UnsupportedSchemeError(f"kv_cache_scheme strategy {kv_scheme.get('strategy')!r}: "
                                         "only per-tensor KV-cache scales are supported")
        if kv_scheme.get("symmetric", True) is False:
            raise UnsupportedSchemeError("kv_cache_scheme: asymmetric KV-cache quantization is not supported")
    return QuantConfig(cast(str, method))  # a missing or unknown quant_method is rejected by __post_init__


def _dynamic_flag(scheme: Any, key: str, where: str) -> bool:
    """Whether an activation scheme object says dynamic; ``None`` (no activation quantization) counts as dynamic."""
    if scheme is None:
        return True
    if not isinstance(scheme, dict) or not isinstance(scheme.get(key), bool):
        raise UnsupportedSchemeError(f"{where}: {scheme!r} has no boolean {key!r}")
    return bool(scheme[key])


def activation_scheme_of(config: dict[str, Any] | None) -> str:
    """``"static"`` or ``"dynamic"``: what a ``quantization_config`` says about FP8 linears' inputs [STATIC-1].

    Read as each engine config reads it: compressed-tensors ``config_groups.*.input_activations.dynamic``
    (every group must agree), ModelOpt FP8 (always static), Quark ``global_quant_config.input_tensors.is_dynamic``
    (no ``input_tensors``: dynamic), Fp8Config ``activation_scheme``. Anything else raises
    ``UnsupportedSchemeError``; no config is dynamic (nothing quantized).
    """
    if not config:
        return "dynamic"
    method = config.get("quant_method")
    if method in FORMAT_ACTIVATION_SCHEMES:
        return FORMAT_ACTIVATION_SCHEMES[method]
    if method == "compressed-tensors":
        groups = config.get("config_groups") or {}
        flags = {_dynamic_flag(group.get("input_activations"), "dynamic", f"config_groups.{name}.input_activations")
                 for name, group in groups.items()}
        if len(flags) > 1:
            raise UnsupportedSchemeError("compressed-tensors config_groups disagree on input_activations.dynamic: "
                                         "one activation scheme per model is supported")
        return "dynamic" if flags in (set(), {True}) else "static"
    if method == "quark":
        inputs = (config.get("global_quant_config") or {}).get("input_tensors")
        return "dynamic" if _dynamic_flag(inputs, "is_dynamic", "global_quant_config.input_tensors") else "static"
    if method == "fp8":
        scheme = config.get("activation_scheme")
        if scheme not in ("static", "dynamic"):
            raise UnsupportedSchemeError(f"fp8 activation_scheme={scheme!r}, but should be 'static' or 'dynamic'")
        return cast(str, scheme)
    raise UnsupportedSchemeError(f"quantization_config.quant_method={method!r} is not supported; "
                                 f"supported: {', '.join(QUANT_METHODS)}")


def kv_scale_strategy_of(config: dict[str, Any] | None) -> str:
    """``"tensor"`` or ``"attn_head"``: the KV-cache scale granularity a ``quantization_config`` asks for [HEADS-1].

    Only compressed-tensors' ``kv_cache_scheme`` has a ``strategy``; every other format (and a config without a
    scheme) is per tensor. Another strategy raises ``UnsupportedSchemeError``.
    """
    scheme = (config or {}).get("kv_cache_scheme")
    if (config or {}).get("quant_method") not in PER_HEAD_KV_METHODS or not isinstance(scheme, dict):
        return "tensor"
    return check_kv_scale_strategy(scheme.get("strategy", "tensor"))


def check_kv_scale_strategy(strategy: object) -> str:
    """``strategy`` if it is one of ``KV_SCALE_STRATEGIES``, else ``UnsupportedSchemeError`` naming it [HEADS-1]."""
    if strategy not in KV_SCALE_STRATEGIES:
        raise UnsupportedSchemeError(f"kv_cache_scheme strategy {strategy!r}: supported "
                                     f"{', '.join(KV_SCALE_STRATEGIES)}")
    return strategy


def checkpoint_dtype_of(config: dict[str, Any] | None) -> str:
    """The ``params_dtype`` a checkpoint's ``config.json`` asks for: its ``dtype`` (transformers >= 4.56) or
    ``torch_dtype``, ``"float32"`` when it names none [DTYPE-1].

    vLLM builds the model in it (``dtype="auto"``; ``vllm/config/model.py`` ``_get_and_verify_dtype``) except
    that it downcasts a float32 config to the platform's preferred dtype; the reference keeps float32.
    A dtype outside ``PARAM_DTYPES`` raises ``UnsupportedSchemeError``.
    """
    raw = (config or {}).get("dtype") or (config or {}).get("torch_dtype") or "float32"
    name = str(raw).removeprefix("torch.")
    if name not in PARAM_DTYPES:
        raise UnsupportedSchemeError(f"config dtype {raw!r}: supported {', '.join(PARAM_DTYPES)}")
    return name
