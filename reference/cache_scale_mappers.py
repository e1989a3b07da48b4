"""Cache-scale mappers: every producer's KV-cache scale names onto ``<container>.attn.<x>_scale``.

One mapper serves every quantization config [NAMES-2]: vLLM gives the
``output_scale`` suffix rules to its Fp8 and Quark configs only. Every rule is a
regex, so it runs before a model's stacked renames (``k_proj`` -> ``qkv_proj``)
can mangle the name [NAMES-7, MAP-1]. The catch-all
rule is limited to attention containers, so canonical names and non-scale names
are fixed points [MAP-8, NAMES-12].
"""

from __future__ import annotations

import re

from loadspec.reference.mapper import WeightsMapper

_CONTAINER = r"(self_attn|mixer)"

OUTPUT_SCALE_MAPPER = WeightsMapper(
    regex={
        re.compile(rf"\.{_CONTAINER}\.([qkv])_proj\.output_scale$"): r".\1.attn.\2_scale",
        re.compile(rf"\.{_CONTAINER}\.prob_output_scale$"): r".\1.attn.prob_scale",
    }
)
"""compressed-tensors (legacy) and Quark names [NAMES-2, NAMES-4]."""

BASE_MAPPER = WeightsMapper(
    regex={
        re.compile(rf"\.{_CONTAINER}\.kv_scale$"): r".\1.attn.k_scale",  # legacy fused [NAMES-6]
        re.compile(rf"\.{_CONTAINER}\.[kv]_proj\.([kv])_scale$"): r".\1.attn.\2_scale",  # ModelOpt [NAMES-3, NAMES-9]
        re.compile(rf"\.{_CONTAINER}\.q_proj\.q_scale$"): r".\1.attn.q_scale",  # ModelOpt FP8 attention [NAMES-15]
        re.compile(rf"\.{_CONTAINER}\.qk(?:qk)?v_proj\.([kv])_scale$"): r".\1.attn.\2_scale",  # fused qkv [NAMES-7]
        re.compile(rf"\.{_CONTAINER}\.(q|k|v|prob)_scale$"): r".\1.attn.\2_scale",  # CT, AutoFP8 [NAMES-1, -5, -11]
    }
)
"""Names vLLM's base ``QuantizationConfig.get_cache_scale_mapper`` covers, plus bare ``prob_scale`` [NAMES-11] and
ModelOpt's ``q_proj.q_scale`` [NAMES-15] (vLLM has no entry for either)."""

CACHE_SCALE_MAPPER = OUTPUT_SCALE_MAPPER | BASE_MAPPER
"""The mapper every reference quantization config returns [NAMES-1..15]."""


def cache_scale_mapper() -> WeightsMapper:
    """The cache-scale mapper of every reference quantization config [NAMES-1..15, MAP-8]."""
    return CACHE_SCALE_MAPPER
