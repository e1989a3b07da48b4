"""KVPROC-8: per-token-head KV-cache dtypes use the checkpoint's per-tensor k/v scales instead of 1.0.

The per-token-head check is missing (``int8_per_token_head`` ... are treated like ``fp8``): the kernel,
which computes its own per-token scales, gets the checkpoint's per-tensor scale multiplied in on top.
"""

from loadspec.reference.kv_cache import KVCacheMethod
from loadspec.reference.vocabulary import PER_TOKEN_HEAD_KV_DTYPES
from mutants._base import ScopedPatchMutant

_resolve = KVCacheMethod.resolve


def like_fp8(self, layer):
    if self.kv_cache_dtype in PER_TOKEN_HEAD_KV_DTYPES:
        return _resolve(KVCacheMethod("fp8"), layer)
    return _resolve(self, layer)


class PerTokenHeadScalesAdapter(ScopedPatchMutant):
    name = report_id = "mutant-per-token-head-scales"
    targets = ("KVPROC-8",)
    suite = ("test_kvproc.py",)
    patches = ((KVCacheMethod, "resolve", like_fp8),)
