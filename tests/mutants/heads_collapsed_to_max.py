"""HEADS-1: per-head KV-cache scales collapsed to the largest head's (a per-tensor kernel path fed per-head scales)."""

from loadspec.reference import kv_cache
from mutants._patched import PatchedAdapter

_resolve = kv_cache.KVCacheMethod.resolve_per_head


def _collapsed(self, layer):
    values = _resolve(self, layer)
    return {name: value.max().expand(value.shape).clone() if hasattr(value, "max") else value
            for name, value in values.items()}


class HeadsCollapsedToMaxAdapter(PatchedAdapter):
    name = report_id = "mutant-heads-collapsed-to-max"
    targets = ("HEADS-1",)
    suite = ("test_heads.py",)
    patches = ((kv_cache.KVCacheMethod, "resolve_per_head", _collapsed),)
