"""HEADS-5: host mirrors of per-head scales read the first head (tensor.reshape(-1)[0].item()), not the largest."""

import torch

from loadspec.reference import kv_cache
from mutants._patched import PatchedAdapter

_write = kv_cache.write_outputs


def _first_head(layer, values) -> None:
    _write(layer, values)
    for name, value in values.items():
        if isinstance(value, torch.Tensor):
            first = float(value.reshape(-1)[0])
            setattr(layer, kv_cache.FLOAT_MIRRORS[name], first)
            if name in kv_cache.CPU_MIRRORS:
                getattr(layer, kv_cache.CPU_MIRRORS[name]).fill_(first)


class FirstHeadMirrorsAdapter(PatchedAdapter):
    name = report_id = "mutant-first-head-mirrors"
    targets = ("HEADS-5",)
    suite = ("test_heads.py",)
    patches = ((kv_cache, "write_outputs", _first_head),)
