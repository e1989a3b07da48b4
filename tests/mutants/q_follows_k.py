"""KVPROC-6: a missing q_scale is set to k_scale instead of 1.0.

What vLLM's own warning says it does ("Checkpoint does not provide a q scaling factor. Setting it to
k_scale", vllm#14570), had the unconditional q block after it not overwritten the value: FP8 attention
backends then quantize Q with K's scale.
"""

from loadspec.reference.kv_cache import KVCacheMethod
from loadspec.reference.vocabulary import SENTINEL
from mutants._base import ScopedPatchMutant

_resolve = KVCacheMethod.resolve


def q_follows_k(self, layer):
    q_missing = float(layer.q_scale) == SENTINEL
    resolved = _resolve(self, layer)
    if q_missing and "k_scale" in resolved:
        resolved["q_scale"] = resolved["k_scale"]
    return resolved


class QFollowsKAdapter(ScopedPatchMutant):
    name = report_id = "mutant-q-follows-k"
    targets = ("KVPROC-6",)
    suite = ("test_kvproc.py",)
    patches = ((KVCacheMethod, "resolve", q_follows_k),)
