"""HEADS-7: per-head scales the checkpoint lacks stay 1.0, so v does not follow k (vLLM's compressed-tensors
placeholders are torch.ones, not the sentinel)."""

import torch

from loadspec.reference import kv_cache
from loadspec.reference.vocabulary import SENTINEL
from mutants._patched import PatchedAdapter

_resolve = kv_cache.KVCacheMethod.resolve_per_head


def _ones(self, layer):
    absent = {name for name in ("k_scale", "v_scale") if bool((getattr(layer, name) == SENTINEL).all())}
    values = _resolve(self, layer)
    for name in absent & set(values):
        values[name] = torch.ones_like(values[name])
    return values


class PerHeadOnesDefaultAdapter(PatchedAdapter):
    name = report_id = "mutant-per-head-ones-default"
    targets = ("HEADS-7",)
    suite = ("test_heads.py",)
    patches = ((kv_cache.KVCacheMethod, "resolve_per_head", _ones),)
