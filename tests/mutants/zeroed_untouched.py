"""RELOAD-5: a non-attention layer that receives nothing in a reload is materialized again without data and
written back as zeros (vLLM materializes such layers with torch.empty_strided on 'Failed to load weights')."""

import torch

from loadspec.reference.lifecycle import is_attention
from loadspec.reference.reload import ReloadSession
from mutants._base import SessionMutant


class ZeroedUntouchedSession(ReloadSession):
    @torch.no_grad()
    def _finish_streaming(self):
        report = super()._finish_streaming()
        for name in report.untouched:
            layer = self.layers[name]
            if not is_attention(layer.module):
                for tensor in layer.kernel.values():
                    tensor.zero_()
        return report


class ZeroedUntouchedAdapter(SessionMutant):
    name = report_id = "mutant-zeroed-untouched"
    targets = ("RELOAD-5",)
    suite = ("test_reload.py",)
    session_class = ZeroedUntouchedSession
