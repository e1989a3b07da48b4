"""LOAD-4: the automatic loader skips a name that matches no parameter (the `if name not in params_dict:
continue` of many hand-written load_weights), so a renamed or misspelt checkpoint tensor is dropped silently."""

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.auto_loader import AutoWeightsLoader
from loadspec.reference.errors import UnknownWeightError


class UnknownNamesSkippedAdapter(ReferenceAdapter):
    name = report_id = "mutant-unknown-names-skipped"
    targets = ("LOAD-4",)
    suite = ("test_load.py",)

    def auto_load(self, module, weights, *, mapper=None, quant_method=None, skip_prefixes=(), skip_substrs=()):
        loader = AutoWeightsLoader(module, skip_prefixes=skip_prefixes, skip_substrs=skip_substrs)
        known = []
        for weight in weights:
            try:
                loader.plan([weight], mapper=mapper)
            except UnknownWeightError:
                continue  # not a parameter of this model: skipped
            known.append(weight)
        return super().auto_load(module, known, mapper=mapper, quant_method=quant_method,
                                 skip_prefixes=skip_prefixes, skip_substrs=skip_substrs)
