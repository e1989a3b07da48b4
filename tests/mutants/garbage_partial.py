"""RELOAD-6: a partial layer is processed anyway, with uninitialized memory for what is missing (vLLM)."""

from loadspec.reference.reload import ReloadSession
from mutants._base import SessionMutant


class GarbagePartialSession(ReloadSession):
    def _handle_partial(self, layer):
        self._process_layer(layer)
        return []


class GarbagePartialAdapter(SessionMutant):
    name = report_id = "mutant-garbage-partial"
    targets = ("RELOAD-6",)
    suite = ("test_reload.py",)
    session_class = GarbagePartialSession
