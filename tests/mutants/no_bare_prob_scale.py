"""NAMES-11: a bare ``self_attn.prob_scale`` is left unmapped.

vLLM 0.33.0's catch-all is ``(?<!\\.attn)\\.([qkv])_scale$``: q, k and v only, so nothing maps a bare
``.prob_scale`` (``_ignore_unexpected_suffixes`` does not list it either).
"""

import re

from loadspec.reference.mapper import WeightsMapper
from mutants._base import CACHE_SCALE_MAPPER, CacheScaleMapperMutant

QKV_ONLY = WeightsMapper(regex={
    (re.compile(p.pattern.replace("(q|k|v|prob)_scale", "(q|k|v)_scale")) if "(q|k|v|prob)_scale" in p.pattern
     else p): v for p, v in CACHE_SCALE_MAPPER.regex.items()})


class NoBareProbScaleAdapter(CacheScaleMapperMutant):
    name = report_id = "mutant-no-bare-prob-scale"
    targets = ("NAMES-11",)
    suite = ("test_names.py",)

    @staticmethod
    def mapper_for(quant_method):
        return QKV_ONLY
