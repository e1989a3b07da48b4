"""LOAD-10: the automatic loader matches a parameter by name prefix, so 'norm.weight.extra' is loaded into
'norm.weight' instead of being rejected as a name below a parameter."""

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.auto_loader import loadable_tensors


class NestedPrefixMatchAdapter(ReferenceAdapter):
    name = report_id = "mutant-nested-prefix-match"
    targets = ("LOAD-10",)
    suite = ("test_load.py",)

    def auto_load(self, module, weights, *, mapper=None, quant_method=None, skip_prefixes=(), skip_substrs=()):
        targets = loadable_tensors(module)

        def matched(name: str) -> str:
            return next((t for t in targets if name != t and name.startswith(t + ".")), name)

        return super().auto_load(module, [(matched(n), t) for n, t in weights], mapper=mapper,
                                 quant_method=quant_method, skip_prefixes=skip_prefixes, skip_substrs=skip_substrs)
