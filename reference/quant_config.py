"""Quantization configs: which cache-scale mapper and KV-cache method a checkpoint's config calls for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from loadspec.reference.cache_scale_mappers import cache_scale_mapper
from loadspec.reference.errors import UnsupportedSchemeError
from loadspec.reference.kv_cache import KVCacheMethod
from loadspec.reference.mapper import WeightsMapper
from loadspec.reference.vocabulary import QUANT_METHODS


@dataclass(frozen=True)
class QuantConfig:
    """The engine-side view of ``config.json``'s ``quantization_config``."""

    quant_method: str

    def __post_init__(self) -> None:
        if self.quant_method not in QUANT_METHODS:
            raise UnsupportedSchemeError(
                f"quantization_config.quant_method={self.quant_method!r} is not supported; "
                f"supported: {', '.join(QUANT_METHODS)}")

    def get_cache_scale_mapper(self) -> WeightsMapper:
        """Every config maps every producer's scale names [NAMES-1..13]."""
        return cache_scale_mapper()

    def kv_cache_method(self, kv_cache_dtype: str) -> KVCacheMethod:
        """The KV-cache method for any attention layer, MHA/GQA and MLA alike [NAMES-8]."""
        return KVCacheMethod(kv_cache_dtype)


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
