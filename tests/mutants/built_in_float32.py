"""DTYPE-1: the model is built in float32 whatever the checkpoint's dtype (issue 10: spec_from_hf_config ignored
config.json's dtype/torch_dtype, so bf16 checkpoints were tested in an fp32 model)."""

from loadspec.conformance.adapters.reference import ReferenceAdapter


class BuiltInFloat32Adapter(ReferenceAdapter):
    name = report_id = "mutant-built-in-float32"
    targets = ("DTYPE-1",)
    suite = ("test_dtype.py",)

    def build_model(self, spec, *, device):
        return super().build_model(spec.with_(params_dtype="float32"), device=device)
