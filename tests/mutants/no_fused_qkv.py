"""NAMES-7: the fused ``self_attn.qkv_proj.{k,v}_scale`` layout has no cache-scale rule.

llm-compressor checkpoints of models with a fused qkv_proj (vllm#25047, sglang#39942) lose their scales;
with the model's stacked ``k_proj -> qkv_proj`` rename the names never reach ``attn.k_scale``
(vllm#32199: "Parameter layers.3.self_attn.qkqkv_proj.k_scale not found").
"""

from mutants._base import CACHE_SCALE_MAPPER, CacheScaleMapperMutant, without_regex

WITHOUT_FUSED = without_regex(CACHE_SCALE_MAPPER, "qk(?:qk)?v_proj")


class NoFusedQkvAdapter(CacheScaleMapperMutant):
    name = report_id = "mutant-no-fused-qkv"
    targets = ("NAMES-7",)
    suite = ("test_names.py",)

    @staticmethod
    def mapper_for(quant_method):
        return WITHOUT_FUSED
