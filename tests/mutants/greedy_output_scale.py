"""NAMES-12: the output-scale rule matches any ``{q,k,v}_proj.*_scale``, weight and input scales included.

``\\.([qkv])_proj\\.\\w*_scale$`` written for ``k_proj.output_scale`` also takes ``k_proj.weight_scale``:
the FP8 weight scale of k_proj is loaded as the KV-cache k_scale (and the linear loses its scale),
like the over-broad ``\\.([qkv])_scale$`` rule that maps ``mlp.experts.0.v_scale`` (vLLM divergence 15).
"""

import re

from loadspec.reference.mapper import WeightsMapper
from mutants._base import CACHE_SCALE_MAPPER, CacheScaleMapperMutant

GREEDY = WeightsMapper(regex={re.compile(r"\.(self_attn|mixer)\.([qkv])_proj\.\w*_scale$"): r".\1.attn.\2_scale"}
                       ) | CACHE_SCALE_MAPPER


class GreedyOutputScaleAdapter(CacheScaleMapperMutant):
    name = report_id = "mutant-greedy-output-scale"
    targets = ("NAMES-12",)
    suite = ("test_names.py",)

    @staticmethod
    def mapper_for(quant_method):
        return GREEDY
