"""LOAD-18: first and dummy loads write the device scales but leave the host mirrors (_k_scale_float ...,
_k_scale_cpu ...) at the values the layer was built with; only the reload path refreshes them (the kernels
reading host floats run with 1.0; the mirror hazard of ai-dynamo/modelexpress#711)."""

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.layers.attention import AttentionLayerBase
from mutants._base import restore_mirrors, saved_mirrors


def _mirrors(model):
    return {module: saved_mirrors(module) for module in model.modules() if isinstance(module, AttentionLayerBase)}


def _put_back(saved) -> None:
    for module, mirrors in saved.items():
        restore_mirrors(module, mirrors)


class FirstLoadStaleMirrorsAdapter(ReferenceAdapter):
    name = report_id = "mutant-first-load-stale-mirrors"
    targets = ("LOAD-18",)
    suite = ("test_load.py",)

    def first_load(self, model, weights):
        saved = _mirrors(model)
        loaded = super().first_load(model, weights)
        _put_back(saved)
        return loaded

    def dummy_load(self, model):
        saved = _mirrors(model)
        super().dummy_load(model)
        _put_back(saved)
