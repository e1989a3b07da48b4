"""SCALE-2: the scale sentinel is built in torch's default dtype, which is the model's dtype while the model is built.

vLLM's ``KVCacheScaleParameter.__new__`` uses ``torch.tensor(-1.0)`` under ``set_default_torch_dtype(model
dtype)`` (SCALE-2's vllm_differs; field notes: "a sentinel built in the default dtype"): in a bf16 model
a float32 checkpoint scale of 0.3 is stored as 0.30078125.
"""

from contextlib import contextmanager
from unittest import mock

import torch

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.scales import KVCacheScaleParameter
from loadspec.reference.vocabulary import SENTINEL, torch_dtype


@contextmanager
def scales_built_in(dtype):
    """While active, new scale parameters are sentinels of ``dtype`` (``None``: torch's default dtype)."""
    def new(cls, *, device=None):
        data = torch.full((), SENTINEL, dtype=dtype or torch.get_default_dtype(), device=device)
        return torch.nn.Parameter.__new__(cls, data, requires_grad=False)

    with mock.patch.object(KVCacheScaleParameter, "__new__", staticmethod(new)):
        yield


class DefaultDtypeScaleAdapter(ReferenceAdapter):
    name = report_id = "mutant-default-dtype-scale"
    targets = ("SCALE-2",)
    suite = ("test_scale.py",)

    def new_scale_parameter(self, *, device):
        with scales_built_in(None):
            return super().new_scale_parameter(device=device)

    def build_model(self, spec, *, device):
        with scales_built_in(torch_dtype(spec.params_dtype)):
            return super().build_model(spec, device=device)
