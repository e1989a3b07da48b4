"""KVPROC-10: an fp8_e5m2 KV cache is accepted under a quantization config that loads KV scales.

The e5m2 check is missing from the attention layer: the FP8 checkpoint's e4m3 scales are attached to an
e5m2 cache, which no producer calibrates for (vLLM raises "fp8_e5m2 kv-cache is not supported with fp8
checkpoints").
"""

from loadspec.reference.layers.attention import Attention
from loadspec.reference.quant_config import QuantConfig
from mutants._base import ScopedPatchMutant


class E5M2AcceptedAdapter(ScopedPatchMutant):
    name = report_id = "mutant-e5m2-accepted"
    targets = ("KVPROC-10",)
    suite = ("test_kvproc.py",)

    def make_attention(self, *, kv_cache_dtype, device):
        if kv_cache_dtype != "fp8_e5m2":
            return super().make_attention(kv_cache_dtype=kv_cache_dtype, device=device)
        layer = Attention(num_heads=2, num_kv_heads=1, head_dim=4, kv_cache_dtype="fp8",
                          quant_config=QuantConfig("fp8"), device=device)
        layer.kv_cache_dtype = layer.quant_method.kv_cache_dtype = kv_cache_dtype
        return layer
