"""KVPROC-3: a quantized KV cache with neither k_scale nor v_scale loaded is rejected instead of using 1.0.

vllm#6738 (fixed by #6761): ``kv_cache_dtype=fp8`` on an FP8 checkpoint without KV scales raised
"Only support per-tensor scaling factor for fp8 KV cache", the default scale not being stored as a float.
"""

from loadspec.reference.kv_cache import KVCacheMethod
from loadspec.reference.vocabulary import SENTINEL, UNQUANTIZED_KV_DTYPES
from mutants._base import ScopedPatchMutant

_resolve = KVCacheMethod.resolve


def reject_missing(self, layer):
    if (self.kv_cache_dtype not in UNQUANTIZED_KV_DTYPES and "per_token_head" not in self.kv_cache_dtype
            and float(layer.k_scale) == SENTINEL and float(layer.v_scale) == SENTINEL):
        raise ValueError("Only support per-tensor scaling factor for fp8 KV cache")
    return _resolve(self, layer)


class NoScalesRejectedAdapter(ScopedPatchMutant):
    name = report_id = "mutant-no-scales-rejected"
    targets = ("KVPROC-3",)
    suite = ("test_kvproc.py",)
    patches = ((KVCacheMethod, "resolve", reject_missing),)
