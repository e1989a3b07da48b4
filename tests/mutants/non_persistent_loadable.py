"""LOAD-9: the automatic loader resolves names against named_buffers(), which lists non-persistent buffers too,
instead of the persistent ones a state dict holds, so a checkpoint tensor overwrites a scratch buffer."""

import torch

from loadspec.reference import auto_loader
from mutants._base import ScopedPatchMutant

_loadable = auto_loader.loadable_tensors


def _with_every_buffer(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    targets = _loadable(module)
    owned = auto_loader.output_buffer_names(module)
    for name, buffer in module.named_buffers():
        if name not in owned:
            targets.setdefault(name, buffer)
    return targets


class NonPersistentLoadableAdapter(ScopedPatchMutant):
    name = report_id = "mutant-non-persistent-loadable"
    targets = ("LOAD-9",)
    suite = ("test_load.py",)
    patches = ((auto_loader, "loadable_tensors", _with_every_buffer),)
