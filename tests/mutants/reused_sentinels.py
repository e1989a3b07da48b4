"""KVPROC-1: creating the KV-cache weights again keeps the scale parameters that already exist.

A ``hasattr`` guard in ``create_weights`` ("already created") makes the second call a no-op: a reload
that re-creates the scales starts from the previous load's values instead of fresh -1.0 sentinels, so
a scale the new checkpoint lacks is silently kept (RELOAD-3's stale value).
"""

from loadspec.reference.kv_cache import KVCacheMethod
from loadspec.reference.vocabulary import SCALE_NAMES
from mutants._base import ScopedPatchMutant

_create = KVCacheMethod.create_weights


def create_once(self, layer, *, device=None):
    if all(name in layer._parameters for name in SCALE_NAMES):
        return
    _create(self, layer, device=device)


class ReusedSentinelsAdapter(ScopedPatchMutant):
    name = report_id = "mutant-reused-sentinels"
    targets = ("KVPROC-1",)
    suite = ("test_kvproc.py",)
    patches = ((KVCacheMethod, "create_weights", create_once),)
