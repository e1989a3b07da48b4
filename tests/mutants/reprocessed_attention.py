"""RELOAD-4: every attention layer is re-processed from fresh sentinels at the end of a reload, also one that
received no weights, so its scales fall back to the defaults (1.0) instead of keeping their values (vLLM's
reload before _finalize_attention_layer, #38995)."""

import torch

from loadspec.reference.reload import ReloadSession
from loadspec.reference.vocabulary import SCALE_NAMES
from mutants._base import SessionMutant


class ReprocessedAttentionSession(ReloadSession):
    @torch.no_grad()
    def _finish_attention(self, layer) -> None:
        module = layer.module
        untouched = not any(name in SCALE_NAMES for name, _, _ in layer.loads)
        super()._finish_attention(layer)
        if untouched and module.quant_method is not None:
            module.quant_method.create_weights(module, device=module._k_scale.device)
            module.quant_method.process_weights_after_loading(module)
            for name in SCALE_NAMES:
                if name in module._parameters:
                    delattr(module, name)


class ReprocessedAttentionAdapter(SessionMutant):
    name = report_id = "mutant-reprocessed-attention"
    targets = ("RELOAD-4",)
    suite = ("test_reload.py",)
    session_class = ReprocessedAttentionSession
