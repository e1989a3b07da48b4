"""RELOAD-15: a reload restores only an attention layer's KV-cache scales, so any other parameter it owns (attention
sinks) stays the meta template the reload swapped in: the reference before issue 15's fix, the hazard vLLM's
test_reload.py sink case guards against."""

import torch

from loadspec.reference.reload import ReloadSession
from mutants._base import SessionMutant


class MetaSinksSession(ReloadSession):
    def finish(self):
        report = super().finish()
        for layer in self.layers.values():
            for name, template in layer.templates.items():
                if name == "sinks":
                    meta = torch.nn.Parameter(torch.empty(template.shape, dtype=template.dtype, device="meta"),
                                              requires_grad=False)
                    layer.module.register_parameter(name, meta)
        return report


class MetaSinksAdapter(SessionMutant):
    name = report_id = "mutant-meta-sinks"
    targets = ("RELOAD-15",)
    suite = ("test_reload.py",)
    session_class = MetaSinksSession
