"""LOAD-1: the default loader special-cases one-element weights only for 0-d parameters, so a (1,) or (1, 1)
parameter given a () or (1, 1, 1) weight is rejected as a shape mismatch (the scalar case vLLM's
default_weight_loader widened in #7534 to any one-element pair)."""

from loadspec.conformance.adapters.reference import ReferenceAdapter


class ScalarOnly0dAdapter(ReferenceAdapter):
    name = report_id = "mutant-scalar-only-0d"
    targets = ("LOAD-1",)
    suite = ("test_load.py",)

    def default_weight_loader(self, param, weight):
        if param.dim() == 0 and weight.numel() == 1:
            param.data.copy_(weight.reshape(()))
            return
        if tuple(param.shape) != tuple(weight.shape):
            raise ValueError(f"Attempted to load weight {tuple(weight.shape)} into parameter {tuple(param.shape)}")
        param.data.copy_(weight)
