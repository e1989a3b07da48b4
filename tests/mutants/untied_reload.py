"""RELOAD-8: a reload gives the tied lm_head its own copy of the new embedding, so the two are no longer one
tensor (layerwise reload's Limitation 2: tied parameters are restored separately)."""

import torch

from loadspec.reference.reload import ReloadSession
from mutants._base import SessionMutant


class UntiedSession(ReloadSession):
    def finish(self):
        report = super().finish()
        for (module_name, name), _ in self.format.aliases.items():
            module = self._modules[module_name]
            module.register_parameter(name, torch.nn.Parameter(module._parameters[name].detach().clone(),
                                                               requires_grad=False))
        return report


class UntiedReloadAdapter(SessionMutant):
    name = report_id = "mutant-untied-reload"
    targets = ("RELOAD-8",)
    suite = ("test_reload.py",)
    session_class = UntiedSession
