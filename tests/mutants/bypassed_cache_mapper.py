"""NAMES-1, NAMES-3..7, NAMES-9, NAMES-13: a model's own load loop never applies the cache-scale mapper.

The model's custom ``load_weights`` bypasses the automatic loader, and skips a name it cannot find
(``if name not in params_dict: continue``): every producer's KV-cache scale name but the canonical one is
dropped silently and the layers run at scale 1.0 (vllm#54623: Qwen3.5's bare loader, "Using KV cache
scaling factor 1.0" on calibrated checkpoints; sgl-project/sglang#39942; the bot review of vllm#43167
on commandr). The primitives are right: only a model-tier test sees it.
"""

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.api import weights_of
from loadspec.reference.cache_scale_mappers import cache_scale_mapper
from loadspec.reference.reload import ReloadSession


def unmapped_scales_skipped(weights):
    """``weights`` without the KV-cache scales the cache-scale mapper would rename (not in params_dict)."""
    mapper = cache_scale_mapper()
    for name, tensor in weights:
        mapped = mapper.map_name(name)
        if mapped is None or mapped == name:
            yield name, tensor


class SkippingSession(ReloadSession):
    def load(self, weights):
        return super().load(unmapped_scales_skipped(weights))


class BypassedCacheMapperAdapter(ReferenceAdapter):
    name = report_id = "mutant-bypassed-cache-mapper"
    targets = ("NAMES-1", "NAMES-3", "NAMES-4", "NAMES-5", "NAMES-6", "NAMES-7", "NAMES-9", "NAMES-13")
    suite = ("test_names.py",)

    def first_load(self, model, weights):
        return super().first_load(model, unmapped_scales_skipped(weights_of(weights)))

    def reload(self, model, weights) -> None:
        super().reload(model, unmapped_scales_skipped(weights_of(weights)))

    def open_reload(self, model):
        return SkippingSession(model)
