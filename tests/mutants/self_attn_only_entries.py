"""NAMES-14: the Quark output_scale and fused-qkv rules name ``.self_attn.`` only.

vLLM 0.33.0's suffix entries (``.self_attn.prob_output_scale``) and the fused rule
``\\.self_attn\\.qk(?:qk)?v_proj\\.([kv])_scale$`` have no ``mixer`` variant: a NemotronH checkpoint in Quark or
fused-qkv layout loads no KV scales.
"""

import re

from loadspec.reference.mapper import WeightsMapper
from mutants._base import CACHE_SCALE_MAPPER, CacheScaleMapperMutant

SELF_ATTN = WeightsMapper(regex={
    (re.compile(p.pattern.replace("(self_attn|mixer)", "(self_attn)"))
     if "output_scale" in p.pattern or "v_proj\\.([kv])_scale" in p.pattern and "qk" in p.pattern else p): v
    for p, v in CACHE_SCALE_MAPPER.regex.items()})


class SelfAttnOnlyEntriesAdapter(CacheScaleMapperMutant):
    name = report_id = "mutant-self-attn-only-entries"
    targets = ("NAMES-14",)
    suite = ("test_names.py",)

    @staticmethod
    def mapper_for(quant_method):
        return SELF_ATTN
