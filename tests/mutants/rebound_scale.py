"""SCALE-6: the scale loader copies into a fresh tensor and rebinds ``param.data``, so the storage changes.

Loaders that "replace" a parameter's data (``param.data = new``) instead of writing into it keep the
value, dtype and device but move the storage: a CUDA graph captured on the old address reads stale
memory (field bugs B29-B31, B40: parameters re-created after loading).
"""

import torch

from mutants._base import ScaleLoaderMutant


class ReboundScaleAdapter(ScaleLoaderMutant):
    name = report_id = "mutant-rebound-scale"
    targets = ("SCALE-6",)
    suite = ("test_scale.py",)

    @staticmethod
    def scale_loader(param, weight, shard_id=None):
        if weight.numel() != 1:
            raise ValueError(f"KV-cache scale expects a scalar weight, got shape {tuple(weight.shape)}")
        fresh = torch.empty((), dtype=param.dtype, device=param.device)
        fresh.copy_(weight.reshape(()))
        param.data = fresh
