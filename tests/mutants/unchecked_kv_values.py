"""KVPROC-7: processing accepts a NaN, infinite, zero or negative KV-cache scale.

vLLM 0.33.0 only asserts ``k_scale > 0`` in the v-only branch (vllm#46264): a NaN or infinite scale from a
broken calibration is written into the device scales and every K/V entry quantizes to NaN or saturates.
"""

import torch

from loadspec.reference.kv_cache import KVCacheMethod
from mutants._base import ScopedPatchMutant

_resolve = KVCacheMethod.resolve


def unchecked(self, layer):
    """The scales processing resolves, the invalid ones passed through unchecked."""
    values = {name: getattr(layer, name) for name in ("q_scale", "k_scale", "v_scale", "prob_scale")}
    bad = {name: float(p) for name, p in values.items() if not (float(p) == -1.0 or 0.0 < float(p) < float("inf"))}
    with torch.no_grad():
        for name in bad:
            values[name].fill_(1.0)
        resolved = _resolve(self, layer)
        for name, value in bad.items():
            values[name].fill_(value)
    resolved.update({name: value for name, value in bad.items() if name in resolved})
    return resolved


class UncheckedKVValuesAdapter(ScopedPatchMutant):
    name = report_id = "mutant-unchecked-kv-values"
    targets = ("KVPROC-7",)
    suite = ("test_kvproc.py",)
    patches = ((KVCacheMethod, "resolve", unchecked),)
