"""RELOAD-10: a layer is processed as soon as its last-registered parameter has all its elements, so a delivery
order that completes weight_scale before weight (shuffled, bucketed, one tensor per call) processes it with
part of the weight missing, and the weight's late tensors are dropped (the ordering hazard of vllm#40317)."""

from loadspec.reference.reload import ReloadSession
from mutants._base import SessionMutant


class LastParamCompletesSession(ReloadSession):
    def _reject_processed(self, source, name, param) -> None:
        pass  # a tensor for an already processed layer is dropped in _deliver, not rejected

    def _deliver(self, layer, name, loaded_weight, shard_id) -> None:
        if layer.processed:
            return  # delivered after processing: dropped
        super()._deliver(layer, name, loaded_weight, shard_id)
        last = list(layer.templates)[-1]
        if not layer.processed and not self.defers(layer.module) \
                and layer.counted(last) >= layer.templates[last].numel:
            self._process_layer(layer)


class LastParamCompletesAdapter(SessionMutant):
    name = report_id = "mutant-last-param-completes"
    targets = ("RELOAD-10",)
    suite = ("test_reload.py",)
    session_class = LastParamCompletesSession
