"""NAMES-10: the automatic loader merges the cache-scale mapper on the left of the model's own mapper.

``quant_config.get_cache_scale_mapper() | model_mapper`` instead of ``model_mapper | ...``: the cache-scale
entries run first, on names the model's mapper has not yet renamed, and on an equal key the model's entry
wins, so a producer's scale names reach nothing (vllm#43167 applies it at the top of load_weights, merged
on the right).
"""

from loadspec.reference.auto_loader import AutoWeightsLoader
from loadspec.reference.mapper import EMPTY_MAPPER
from mutants._base import ScopedPatchMutant

_effective = AutoWeightsLoader.effective_mapper


def merged_on_the_left(self, mapper):
    merged = _effective(self, None)  # the cache-scale mapper alone (or nothing without a quant config)
    return merged | (mapper or EMPTY_MAPPER) if merged else (mapper or EMPTY_MAPPER)


class CacheMapperLeftAdapter(ScopedPatchMutant):
    name = report_id = "mutant-cache-mapper-left"
    targets = ("NAMES-10",)
    suite = ("test_names.py",)
    patches = ((AutoWeightsLoader, "effective_mapper", merged_on_the_left),)
