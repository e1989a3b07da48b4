"""KVPROC-9: checkpoint k/v scales are applied although the KV cache is not quantized.

sgl-project/sglang#18396: ``k_scale=0.06`` applied to a BF16 KV cache made attention scores ~16x
too small. The quantized-dtype check is missing, so ``auto``/``bfloat16`` caches take the loaded k/v.
"""

from loadspec.reference.kv_cache import KVCacheMethod
from loadspec.reference.vocabulary import UNQUANTIZED_KV_DTYPES
from mutants._base import ScopedPatchMutant

_resolve = KVCacheMethod.resolve


def always_quantized(self, layer):
    if self.kv_cache_dtype in UNQUANTIZED_KV_DTYPES:
        return _resolve(KVCacheMethod("fp8"), layer)
    return _resolve(self, layer)


class UnquantizedCacheScaledAdapter(ScopedPatchMutant):
    name = report_id = "mutant-unquantized-cache-scaled"
    targets = ("KVPROC-9",)
    suite = ("test_kvproc.py",)
    patches = ((KVCacheMethod, "resolve", always_quantized),)
