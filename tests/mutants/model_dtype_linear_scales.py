"""DTYPE-2: linear weight_scale/input_scale created in the model's dtype (bf16/fp16), so float32 checkpoint scales
are rounded on load (the linear-scale twin of SCALE-2's default-dtype KVCacheScaleParameter)."""

from loadspec.reference.layers import linear
from mutants._patched import PatchedAdapter

_create = linear.Fp8LinearMethod.create_weights


def _in_model_dtype(self, layer, shards, out_features, in_features, dtype, device) -> None:
    _create(self, layer, shards, out_features, in_features, dtype, device)
    for name in ("weight_scale", "input_scale"):
        param = layer._parameters.get(name)
        if param is not None:
            param.data = param.data.to(dtype)


class ModelDtypeLinearScalesAdapter(PatchedAdapter):
    name = report_id = "mutant-model-dtype-linear-scales"
    targets = ("DTYPE-2",)
    suite = ("test_dtype.py",)
    patches = ((linear.Fp8LinearMethod, "create_weights", _in_model_dtype),)

    def build_model(self, spec, *, device):
        with self._patched():
            return super().build_model(spec, device=device)
