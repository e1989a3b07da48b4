"""NAMES-2: the legacy ``{q,k,v}_proj.output_scale`` rules belong to the Fp8 and Quark configs only.

vLLM 0.33.0 gives the output_scale suffix map to ``Fp8Config`` and ``QuarkConfig``; the compressed-tensors and
ModelOpt configs inherit the base mapper, so a pre-compressed-tensors#133 checkpoint (legacy output_scale
names under a compressed-tensors config) loads no KV scales.
"""

from mutants._base import CACHE_SCALE_MAPPER, CacheScaleMapperMutant, without_regex

BASE_ONLY = without_regex(CACHE_SCALE_MAPPER, "output_scale")


class OutputScalesFp8QuarkOnlyAdapter(CacheScaleMapperMutant):
    name = report_id = "mutant-output-scales-fp8-quark-only"
    targets = ("NAMES-2",)
    suite = ("test_names.py",)

    @staticmethod
    def mapper_for(quant_method):
        return CACHE_SCALE_MAPPER if quant_method in ("fp8", "quark") else BASE_ONLY
