"""ORDER-2: finishing a reload processes again every layer already processed when its last element arrived.

vLLM resets a layer's load info once it is processed (``_layerwise_process``, ``info.reset``); a finalize
step that walks every layer with loaded elements without that reset processes complete layers twice
(FP8 re-quantization and transposes run on already processed tensors in an engine whose processing is
not idempotent, field bug B27).
"""

from loadspec.reference.lifecycle import is_attention
from loadspec.reference.reload import ReloadSession
from mutants._base import SessionMutant


class ReprocessingSession(ReloadSession):
    def _process_layer(self, layer):
        kept = list(layer.loads)  # the load info is kept (not reset) once the layer is processed
        super()._process_layer(layer)
        layer.kept = kept

    def _finish_streaming(self):
        for layer in self.layers.values():
            if layer.processed and getattr(layer, "kept", None) and not is_attention(layer.module):
                layer.processed, layer.loads, layer.kept = False, layer.kept, None
                self._process_layer(layer)
        return super()._finish_streaming()


class ReprocessedLayersAdapter(SessionMutant):
    name = report_id = "mutant-reprocessed-layers"
    targets = ("ORDER-2",)
    suite = ("test_order.py",)
    session_class = ReprocessingSession
