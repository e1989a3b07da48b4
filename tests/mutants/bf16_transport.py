"""RELOAD-2: the reload path receives every float32/float16 weight matrix in bf16 (weight sync broadcast in the
training dtype; scales and norms are sent as they are), so embeddings and unquantized linears are rounded: a reload
no longer equals a fresh load of the same checkpoint (FP8 weights survive: every e4m3 value is exact in bf16)."""

import torch

from loadspec.reference.api import weights_of
from mutants._base import SessionMutant

_EXACT = (torch.float8_e4m3fn, torch.bfloat16)


def _through_bf16(weights):
    for name, tensor in weights:
        if tensor.dim() >= 2 and tensor.is_floating_point() and tensor.dtype not in _EXACT:
            tensor = tensor.to(torch.bfloat16).to(tensor.dtype)
        yield name, tensor


class Bf16TransportAdapter(SessionMutant):
    name = report_id = "mutant-bf16-transport"
    targets = ("RELOAD-2",)
    suite = ("test_reload.py",)

    def reload(self, model, weights) -> None:
        super().reload(model, _through_bf16(weights_of(weights)))
