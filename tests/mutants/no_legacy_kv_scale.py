"""NAMES-6: the legacy fused ``self_attn.kv_scale`` has no cache-scale rule.

sgl-project/sglang#39942: hand-written loaders drop ``.kv_scale`` (``amd/Mixtral-8x7B-Instruct-v0.1-FP8-KV``
still ships it, vllm#31202); every layer then runs at the default scale.
"""

from mutants._base import CACHE_SCALE_MAPPER, CacheScaleMapperMutant, without_regex

WITHOUT_KV_SCALE = without_regex(CACHE_SCALE_MAPPER, r"\.kv_scale$")


class NoLegacyKvScaleAdapter(CacheScaleMapperMutant):
    name = report_id = "mutant-no-legacy-kv-scale"
    targets = ("NAMES-6",)
    suite = ("test_names.py",)

    @staticmethod
    def mapper_for(quant_method):
        return WITHOUT_KV_SCALE
