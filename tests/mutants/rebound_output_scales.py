"""KVPROC-13: processing rebinds the device scales to new tensors instead of writing them in place.

vLLM's ``CompressedTensorsKVCacheMethod`` assigns ``layer._k_scale = layer.k_scale``, which turns the
``_k_scale`` buffer into another tensor (new identity, new ``data_ptr``): a captured CUDA graph keeps
reading the old one.
"""

import torch

from loadspec.reference.kv_cache import KVCacheMethod, write_outputs
from loadspec.reference.vocabulary import OUTPUT_BUFFERS, SCALE_NAMES
from mutants._base import ScopedPatchMutant


def process_rebinding(self, layer):
    if not hasattr(layer, "q_scale"):
        return
    values = self.resolve(layer)
    for name in values:
        old = getattr(layer, OUTPUT_BUFFERS[name])
        layer.register_buffer(OUTPUT_BUFFERS[name], torch.empty_like(old), persistent=True)
    write_outputs(layer, values)
    for name in SCALE_NAMES:
        delattr(layer, name)


class ReboundOutputScalesAdapter(ScopedPatchMutant):
    name = report_id = "mutant-rebound-output-scales"
    targets = ("KVPROC-13",)
    suite = ("test_kvproc.py",)
    patches = ((KVCacheMethod, "process_weights_after_loading", process_rebinding),)
