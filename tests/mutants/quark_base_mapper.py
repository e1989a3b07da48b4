"""NAMES-4: the Quark config inherits the base cache-scale mapper, which has no output_scale rules.

``QuarkConfig`` does not override ``get_cache_scale_mapper`` (as compressed-tensors and ModelOpt do not):
Quark's ``self_attn.k_proj.output_scale`` and ``self_attn.prob_output_scale`` are left unmapped.
"""

from mutants._base import CACHE_SCALE_MAPPER, CacheScaleMapperMutant, without_regex

BASE_ONLY = without_regex(CACHE_SCALE_MAPPER, "output_scale")


class QuarkBaseMapperAdapter(CacheScaleMapperMutant):
    name = report_id = "mutant-quark-base-mapper"
    targets = ("NAMES-4",)
    suite = ("test_names.py",)

    @staticmethod
    def mapper_for(quant_method):
        return BASE_ONLY if quant_method == "quark" else CACHE_SCALE_MAPPER
