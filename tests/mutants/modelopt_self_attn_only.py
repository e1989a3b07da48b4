"""NAMES-9: the ModelOpt per-projection rule is written for ``self_attn`` only.

``\\.self_attn\\.[kv]_proj\\.([kv])_scale$`` without vLLM's separate ``\\.mixer\\.`` rule: NemotronH's
``mixer.k_proj.k_scale`` stays unmapped (the hybrid-model scales that vLLM added a rule for).
"""

import re

from loadspec.reference.mapper import WeightsMapper
from mutants._base import CACHE_SCALE_MAPPER, CacheScaleMapperMutant

SELF_ATTN_ONLY = WeightsMapper(regex={
    (re.compile(p.pattern.replace("(self_attn|mixer)", "(self_attn)")) if r"[kv]_proj\.([kv])_scale" in p.pattern
     else p): v for p, v in CACHE_SCALE_MAPPER.regex.items()})


class ModelOptSelfAttnOnlyAdapter(CacheScaleMapperMutant):
    name = report_id = "mutant-modelopt-self-attn-only"
    targets = ("NAMES-9",)
    suite = ("test_names.py",)

    @staticmethod
    def mapper_for(quant_method):
        return SELF_ATTN_ONLY
