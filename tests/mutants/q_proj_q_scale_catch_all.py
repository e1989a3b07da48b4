"""NAMES-15: ModelOpt's ``q_proj.q_scale`` (TensorRT-Edge-LLM FP8 attention) reaches only the generic catch-all.

vLLM 0.33.0's base cache-scale mapper has no entry for ``.self_attn.q_proj.q_scale``: its catch-all
``(?<!\\.attn)\\.([qkv])_scale$`` rewrites it to ``self_attn.q_proj.attn.q_scale`` (then ``qkv_proj.attn.q_scale``
after the model's stacked entry), a module no model has: ``QKVParallelLinear.load_weights`` raises AttributeError
"QKVParallelLinear has no attribute `attn`". This mapper does the same: the NAMES-15 entry is replaced by the
catch-all's result.
"""

import re

from loadspec.reference.mapper import WeightsMapper
from mutants._base import CACHE_SCALE_MAPPER, CacheScaleMapperMutant

CATCH_ALL_ONLY = WeightsMapper(regex={
    **{p: v for p, v in CACHE_SCALE_MAPPER.regex.items() if r"q_proj\.q_scale" not in p.pattern},
    re.compile(r"\.(self_attn|mixer)\.q_proj\.q_scale$"): r".\1.q_proj.attn.q_scale",
})


class QProjQScaleCatchAllAdapter(CacheScaleMapperMutant):
    name = report_id = "mutant-q-proj-q-scale-catch-all"
    targets = ("NAMES-15",)
    suite = ("test_names.py",)

    @staticmethod
    def mapper_for(quant_method):
        return CATCH_ALL_ONLY
