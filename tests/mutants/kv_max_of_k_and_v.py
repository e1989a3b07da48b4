"""KVPROC-2: with k and v both loaded, processing gives both outputs max(k, v).

The legacy fused ``kv_scale`` semantics (AutoFP8 before #25 wrote one scale, the max of k and v)
applied to a checkpoint that has the two split scales: V is quantized with K's scale and vice versa.
"""

from loadspec.reference.kv_cache import KVCacheMethod
from mutants._base import ScopedPatchMutant

_resolve = KVCacheMethod.resolve


def max_of_k_and_v(self, layer):
    resolved = _resolve(self, layer)
    if "k_scale" in resolved and "v_scale" in resolved:
        resolved["k_scale"] = resolved["v_scale"] = max(resolved["k_scale"], resolved["v_scale"])
    return resolved


class KVMaxAdapter(ScopedPatchMutant):
    name = report_id = "mutant-kv-max-of-k-and-v"
    targets = ("KVPROC-2",)
    suite = ("test_kvproc.py",)
    patches = ((KVCacheMethod, "resolve", max_of_k_and_v),)
