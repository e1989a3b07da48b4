"""HEADS-3, HEADS-4: per-head device scales re-registered as new buffers by processing (vLLM's
CompressedTensorsKVCacheMethod: register_buffer('_k_scale', layer.k_scale.detach()))."""

import torch

from loadspec.reference import kv_cache
from mutants._patched import PatchedAdapter

_write = kv_cache.write_outputs


def _rebinding(layer, values) -> None:
    _write(layer, values)
    for name, value in values.items():
        if isinstance(value, torch.Tensor):
            buffer = getattr(layer, kv_cache.OUTPUT_BUFFERS[name])
            layer.register_buffer(kv_cache.OUTPUT_BUFFERS[name], buffer.detach().clone(), persistent=True)


class ReboundHeadBuffersAdapter(PatchedAdapter):
    name = report_id = "mutant-rebound-head-buffers"
    targets = ("HEADS-3", "HEADS-4")
    suite = ("test_heads.py",)
    patches = ((kv_cache, "write_outputs", _rebinding),)
