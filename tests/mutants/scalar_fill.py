"""SCALE-5: the scale loader writes with ``fill_``, which a copy counter cannot see (vLLM before #38995)."""

from mutants._base import ScaleLoaderMutant


class ScalarFillAdapter(ScaleLoaderMutant):
    name = report_id = "mutant-scalar-fill"
    targets = ("SCALE-5",)
    suite = ("test_scale.py",)

    @staticmethod
    def scale_loader(param, weight, shard_id=None):
        param.data.fill_(weight.reshape(()).item())
