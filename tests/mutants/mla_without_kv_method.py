"""NAMES-8: the ModelOpt config attaches no KV-cache method to MLA attention layers.

Before vllm#35430 (2026-02-26) ``ModelOptFp8Config.get_quant_method`` returned the KV-cache method for
``Attention`` only: an MLA model's (DeepSeek-V2/V3) ``self_attn.k_scale`` found no parameter to load into
and every MLA layer ran at the default scale 1.0.
"""

from loadspec.reference.layers.attention import AttentionLayerBase, MLAAttention
from mutants._base import ScopedPatchMutant

_init = AttentionLayerBase._init_kv_cache


def init_kv_cache(self, *, kv_cache_dtype, quant_config, device):
    if isinstance(self, MLAAttention) and quant_config is not None and quant_config.quant_method == "modelopt":
        quant_config = None
    _init(self, kv_cache_dtype=kv_cache_dtype, quant_config=quant_config, device=device)


class MlaWithoutKvMethodAdapter(ScopedPatchMutant):
    name = report_id = "mutant-mla-without-kv-method"
    targets = ("NAMES-8",)
    suite = ("test_names.py",)
    patches = ((AttentionLayerBase, "_init_kv_cache", init_kv_cache),)
