"""RELOAD-7: the loaded-element counts are not reset between reloads (vLLM's _layerwise_process resets them with
info.reset), so in the second reload of the same checkpoint a layer counts as complete at its first tensor, is
processed from a staging buffer the rest never reached, and the late tensors are dropped (debug log only)."""

import copy

from loadspec.reference.reload import ReloadSession
from mutants._base import SessionMutant

_COUNTS = "_mutant_reload_counts"


class UnresetCountsSession(ReloadSession):
    def _reject_processed(self, source, name, param) -> None:
        pass  # a tensor for an already processed layer is dropped in _deliver, not rejected

    def __init__(self, model, **options) -> None:
        super().__init__(model, **options)
        for name, (regions, counted) in getattr(model, _COUNTS, {}).items():
            if name in self.layers:
                layer = self.layers[name]
                layer.regions = copy.deepcopy(regions)
                layer._counted = dict(counted)
                layer._counted_sum = sum(min(got, layer.templates[n].numel) for n, got in counted.items())

    def _deliver(self, layer, name, loaded_weight, shard_id) -> None:
        if layer.processed:
            return  # 'Excessive loading': dropped
        super()._deliver(layer, name, loaded_weight, shard_id)

    def finish(self):
        report = super().finish()
        self.model.__dict__[_COUNTS] = {name: (layer.regions, layer._counted) for name, layer in self.layers.items()}
        return report


class UnresetCountsAdapter(SessionMutant):
    name = report_id = "mutant-unreset-counts"
    targets = ("RELOAD-7",)
    suite = ("test_reload.py",)
    session_class = UnresetCountsSession
