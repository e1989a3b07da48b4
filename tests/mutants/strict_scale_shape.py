"""SCALE-3: the scale loader asserts equal shapes, so a ``(1,)`` checkpoint scale cannot load into the 0-d parameter.

vLLM before #7534 (field bug B11): ``AssertionError: Attempted to load weight (torch.Size([1])) into
parameter (torch.Size([]))``. The assertion also rejects multi-element scales with an ``AssertionError``
instead of a ``ValueError`` naming the shape (SCALE-4).
"""

from mutants._base import ScaleLoaderMutant


class StrictScaleShapeAdapter(ScaleLoaderMutant):
    name = report_id = "mutant-strict-scale-shape"
    targets = ("SCALE-3", "SCALE-4")
    suite = ("test_scale.py",)

    @staticmethod
    def scale_loader(param, weight, shard_id=None):
        assert param.size() == weight.size(), (
            f"Attempted to load weight ({weight.size()}) into parameter ({param.size()})")
        param.data.copy_(weight)
