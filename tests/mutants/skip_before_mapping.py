"""LOAD-5: skip_prefixes/skip_substrs are tested against the checkpoint names before the mapper runs, so a skip
rule written in the model's names (e.g. 'lm_head.' on a tied model) misses a renamed checkpoint tensor."""

from loadspec.conformance.adapters.reference import ReferenceAdapter


class SkipBeforeMappingAdapter(ReferenceAdapter):
    name = report_id = "mutant-skip-before-mapping"
    targets = ("LOAD-5",)
    suite = ("test_load.py",)

    def auto_load(self, module, weights, *, mapper=None, quant_method=None, skip_prefixes=(), skip_substrs=()):
        kept = [(name, tensor) for name, tensor in weights
                if not name.startswith(tuple(skip_prefixes)) and not any(s in name for s in skip_substrs)]
        return super().auto_load(module, kept, mapper=mapper, quant_method=quant_method)
