"""KVPROC-4: with only k_scale loaded, v_scale defaults to 1.0 instead of following k.

The single-scale branch treats each scale on its own: a checkpoint that ships k alone (the legacy
fused ``kv_scale`` maps to k only, NAMES-6) runs V at scale 1.0, which saturates or wastes the FP8 range.
"""

from loadspec.reference.kv_cache import KVCacheMethod
from loadspec.reference.vocabulary import SENTINEL
from mutants._base import ScopedPatchMutant

_resolve = KVCacheMethod.resolve


def v_defaults_to_one(self, layer):
    v_missing = float(layer.v_scale) == SENTINEL and float(layer.k_scale) != SENTINEL
    resolved = _resolve(self, layer)
    if v_missing and "v_scale" in resolved:
        resolved["v_scale"] = 1.0
    return resolved


class KOnlyVDefaultAdapter(ScopedPatchMutant):
    name = report_id = "mutant-k-only-v-default"
    targets = ("KVPROC-4",)
    suite = ("test_kvproc.py",)
    patches = ((KVCacheMethod, "resolve", v_defaults_to_one),)
