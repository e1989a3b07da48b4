"""ORDER-4: a reload buffers every layer and processes them all at ``finish``, not when each one is complete.

What a reload without layerwise processing does (SGLang's ``update_weights_from_disk``: ``load_weights``
then every ``process_weights_after_loading``): nothing is processed while weights stream in, so a
bucketed update holds every layer's buffers until the end. The COUNT-4 test, which checks layers are
processed before ``finish``, fails too.
"""

from loadspec.reference.lifecycle import is_attention
from loadspec.reference.reload import ReloadSession
from mutants._base import SessionMutant


class ProcessAtFinishSession(ReloadSession):
    def defers(self, module):
        return True

    def _finish_streaming(self):
        for layer in self.layers.values():
            if not layer.processed and layer.loads and not is_attention(layer.module) \
                    and layer.counted() >= layer.total:
                self._process_layer(layer)
        return super()._finish_streaming()


class ProcessAtFinishAdapter(SessionMutant):
    name = report_id = "mutant-process-at-finish"
    targets = ("ORDER-4",)
    suite = ("test_order.py",)
    session_class = ProcessAtFinishSession
