"""SCALE-4: the model's scale loading flattens a multi-element checkpoint scale to its first element.

The issue-15 field case (pytorch#165873's behaviour): a per-head ``(H, 1, 1)`` or ``(2,)`` KV-cache scale
loads as its element 0 through the model's first load and reload, silently; the primitive scale
loader still rejects it, so only the model tier can see this.
"""

from loadspec.reference.loaders import check_dtype
from loadspec.reference.scales import KVCacheScaleParameter, check_scale_value
from mutants._patched import PatchedAdapter


def _check_without_shape(param, loaded_weight, shard_id=None):
    check_dtype(param, loaded_weight)
    check_scale_value(loaded_weight.reshape(-1)[0], name=getattr(param, "loadspec_name", None))


def _first_element(param, loaded_weight, shard_id=None):
    param.data.copy_(loaded_weight.reshape(-1)[0])


class FlatteningModelLoaderAdapter(PatchedAdapter):
    name = report_id = "mutant-flattening-model-loader"
    targets = ("SCALE-4",)
    suite = ("test_scale.py",)
    patches = ((KVCacheScaleParameter, "weight_check", staticmethod(_check_without_shape)),
               (KVCacheScaleParameter, "weight_loader", staticmethod(_first_element)))
