"""NAMES-10: the cache-scale mapper is merged on the right, but the model's entry wins on an equal key.

The loader builds ``model_mapper | cache_mapper`` and then lays the model's entries over it again (as a loader
that "lets the model override" would, e.g. ``{**cache_entries, **model_entries}`` per stage): every name the two
do not share maps as before, but where the model's mapper has a cache-scale key, the cache-scale entry is lost
(vLLM's ``WeightsMapper.__or__`` takes the right side's value, #43167).
"""

from loadspec.reference.auto_loader import AutoWeightsLoader
from mutants._base import ScopedPatchMutant

_effective = AutoWeightsLoader.effective_mapper


def model_entries_over(self, mapper):
    merged = _effective(self, mapper)
    return merged | mapper if mapper is not None else merged


class ModelEntryWinsAdapter(ScopedPatchMutant):
    name = report_id = "mutant-model-entry-wins"
    targets = ("NAMES-10",)
    suite = ("test_names.py",)
    patches = ((AutoWeightsLoader, "effective_mapper", model_entries_over),)
