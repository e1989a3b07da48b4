"""KVPROC-12: processing leaves the four scale parameters registered.

Without the ``del layer.k_scale ...`` step the checkpoint-format parameters outlive processing: a second
processing re-resolves them, and a later reload finds stale loaded values instead of fresh sentinels.
"""

from loadspec.reference.kv_cache import KVCacheMethod, write_outputs
from mutants._base import ScopedPatchMutant


def process_keeping_parameters(self, layer):
    write_outputs(layer, self.resolve(layer))


class KeptParametersAdapter(ScopedPatchMutant):
    name = report_id = "mutant-kept-parameters"
    targets = ("KVPROC-12",)
    suite = ("test_kvproc.py",)
    patches = ((KVCacheMethod, "process_weights_after_loading", process_keeping_parameters),)
