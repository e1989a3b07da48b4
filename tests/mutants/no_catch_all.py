"""NAMES-1: the cache-scale mapper has no generic ``<container>.{q,k,v}_scale`` rule.

Only the ModelOpt/fused/legacy rules are there, so compressed-tensors' ``self_attn.k_scale`` (and
AutoFP8's, NAMES-5) never reach ``self_attn.attn.k_scale`` (sgl-project/sglang#35455: the qwen3_5
mapper only knew ModelOpt names; "Parameter model.layers.N.k_scale not found").
"""

from mutants._base import CACHE_SCALE_MAPPER, CacheScaleMapperMutant, without_regex

WITHOUT_CATCH_ALL = without_regex(CACHE_SCALE_MAPPER, r"\.(q|k|v|prob)_scale$")


class NoCatchAllAdapter(CacheScaleMapperMutant):
    name = report_id = "mutant-no-catch-all"
    targets = ("NAMES-1", "NAMES-5")
    suite = ("test_names.py",)

    @staticmethod
    def mapper_for(quant_method):
        return WITHOUT_CATCH_ALL
