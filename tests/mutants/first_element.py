"""SCALE-4: the scale loader silently takes element 0 of any tensor (vLLM's pre-#43167 model loaders)."""

from mutants._base import ScaleLoaderMutant


class FirstElementAdapter(ScaleLoaderMutant):
    name = report_id = "mutant-first-element"
    targets = ("SCALE-4",)
    suite = ("test_scale.py",)

    @staticmethod
    def scale_loader(param, weight, shard_id=None):
        param.data.copy_(weight.reshape(-1)[0])
