"""STATIC-2: a fused linear's static input_scale is processed to its first shard's (q's for qkv_proj), not the max."""

from loadspec.reference.layers import linear
from mutants._patched import PatchedAdapter

_process = linear.Fp8LinearMethod.process_weights_after_loading


def _first_shard(self, layer) -> None:
    first = layer.input_scale.detach()[0].clone() if self.static_input else None
    _process(self, layer)
    if first is not None:
        layer.input_scale.data.copy_(first)


class FirstShardInputScaleAdapter(PatchedAdapter):
    name = report_id = "mutant-first-shard-input-scale"
    targets = ("STATIC-2",)
    suite = ("test_static.py",)
    patches = ((linear.Fp8LinearMethod, "process_weights_after_loading", _first_shard),)
