"""E2E-2: a reload never reloads the KV-cache scales: attention layers keep the scales they had.

The layerwise reload restores each attention layer's kernel tensors without replaying the scale loads
into fresh sentinels and processing them (vLLM before #38995 could not reload attention scales at all),
so a model dummy-loaded and then reloaded keeps KV scales 1.0 while a fresh load of the same
checkpoint has the calibrated ones: the two kernel states differ.
"""

from loadspec.reference.reload import ReloadSession
from loadspec.reference.vocabulary import SCALE_NAMES
from mutants._base import SessionMutant


class ScaleKeepingSession(ReloadSession):
    def _finish_attention(self, layer) -> None:
        module = layer.module
        for name in SCALE_NAMES:
            if name in module._parameters:
                delattr(module, name)
        module.process_weights_after_loading()
        layer.processed = True
        self.report.processed.append(layer.name)


class ReloadKeepsKVScalesAdapter(SessionMutant):
    name = report_id = "mutant-reload-keeps-kv-scales"
    targets = ("E2E-2",)
    suite = ("test_e2e.py",)
    session_class = ScaleKeepingSession
