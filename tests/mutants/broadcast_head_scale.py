"""HEADS-2: a per-head scale of the wrong shape is flattened and broadcast, not rejected (vLLM's _tp_aware_loader)."""

from loadspec.reference import scales
from mutants._patched import PatchedAdapter


def _flattened(loaded_weight, heads, *, name=None) -> None:
    if loaded_weight.numel() not in (1, heads):
        raise scales.ScaleShapeError(f"{name}: copy_ cannot fit {loaded_weight.numel()} values into {heads}")


def _broadcasting_loader(param, loaded_weight, shard_id=None) -> None:
    param.data.copy_(loaded_weight.reshape(-1).expand(param.numel()) if loaded_weight.numel() == 1
                     else loaded_weight.reshape(param.shape))


class BroadcastHeadScaleAdapter(PatchedAdapter):
    name = report_id = "mutant-broadcast-head-scale"
    targets = ("HEADS-2",)
    suite = ("test_heads.py",)
    patches = ((scales, "check_head_scale_shape", _flattened),
               (scales.HeadScaleParameter, "weight_loader", staticmethod(_broadcasting_loader)))
