"""STATIC-1: static activations decided by the quant method's name, so only ModelOpt gets input_scale (issue 10)."""

from loadspec.conformance.adapters.reference import ReferenceAdapter


class NameDecidedStaticAdapter(ReferenceAdapter):
    name = report_id = "mutant-name-decided-static"
    targets = ("STATIC-1",)
    suite = ("test_static.py",)

    def build_model(self, spec, *, device):
        # the config's activation scheme is ignored: the format's default (static for ModelOpt only) decides
        return super().build_model(spec.with_(activation_scheme=None), device=device)
