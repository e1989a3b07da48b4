"""LOAD-3: the automatic loader returns the checkpoint names it was given, not the mapped names it loaded
(callers comparing the result with the model's parameter names then see renamed weights as unloaded)."""

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.auto_loader import AutoWeightsLoader, write_planned
from loadspec.reference.quant_config import QuantConfig


class CheckpointNamesReturnedAdapter(ReferenceAdapter):
    name = report_id = "mutant-checkpoint-names-returned"
    targets = ("LOAD-3",)
    suite = ("test_load.py",)

    def auto_load(self, module, weights, *, mapper=None, quant_method=None, skip_prefixes=(), skip_substrs=()):
        if quant_method is not None:
            module.quant_config = QuantConfig(quant_method)
        planned = AutoWeightsLoader(module, skip_prefixes=skip_prefixes, skip_substrs=skip_substrs).plan(
            weights, mapper=mapper)
        write_planned(planned)
        return {load.source for load in planned}
