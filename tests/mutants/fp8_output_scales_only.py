"""NAMES-5: the Fp8 config's cache-scale mapper is its output_scale suffix map, not OR-ed with the base mapper.

``Fp8Config.get_cache_scale_mapper`` returns ``WeightsMapper(orig_to_new_suffix={...output_scale...})``
and forgets ``| QuantizationConfig.get_cache_scale_mapper()``: AutoFP8's ``self_attn.k_scale`` and the
legacy ``self_attn.kv_scale`` (NAMES-6) are no longer mapped under ``quant_method="fp8"``.
"""

from loadspec.reference.cache_scale_mappers import OUTPUT_SCALE_MAPPER
from mutants._base import CACHE_SCALE_MAPPER, CacheScaleMapperMutant


class Fp8OutputScalesOnlyAdapter(CacheScaleMapperMutant):
    name = report_id = "mutant-fp8-output-scales-only"
    targets = ("NAMES-5", "NAMES-6")
    suite = ("test_names.py",)

    @staticmethod
    def mapper_for(quant_method):
        return OUTPUT_SCALE_MAPPER if quant_method == "fp8" else CACHE_SCALE_MAPPER
