"""Glue for mutants whose FP8 linear processing is wrong: the model's own layers get ``method_class``."""

from __future__ import annotations

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.layers.linear import Fp8LinearMethod


class LinearMethodMutant(ReferenceAdapter):
    """The reference adapter, building models whose FP8 linears use ``method_class`` (first load and reload alike;
    the ``ref`` oracle's models keep the reference's)."""

    method_class: type[Fp8LinearMethod] = Fp8LinearMethod

    def build_model(self, spec, *, device):
        model = super().build_model(spec, device=device)
        for module in model.modules():
            method = getattr(module, "quant_method", None)
            if type(method) is Fp8LinearMethod:
                swapped = self.method_class.__new__(self.method_class)
                swapped.__dict__.update(vars(method))
                module.quant_method = swapped
        return model
