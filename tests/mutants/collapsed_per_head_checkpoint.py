"""HEADS-6: a per-tensor config silently collapses a per-head checkpoint scale to its largest head."""

from loadspec.reference import scales
from mutants._patched import PatchedAdapter


def _any_shape(loaded_weight, *, name=None) -> None:
    """Accepts every shape."""


def _max_loader(param, loaded_weight, shard_id=None) -> None:
    param.data.copy_(loaded_weight.detach().reshape(-1).max().reshape(()))


class CollapsedPerHeadCheckpointAdapter(PatchedAdapter):
    name = report_id = "mutant-collapsed-per-head-checkpoint"
    targets = ("HEADS-6",)
    suite = ("test_heads.py",)
    patches = ((scales, "check_scale_shape", _any_shape),
               (scales.KVCacheScaleParameter, "weight_loader", staticmethod(_max_loader)))
