"""RELOAD-12: an abandoned (unfinished, garbage-collected) reload session leaves its meta templates registered."""

from loadspec.reference.reload import ReloadSession
from mutants._base import SessionMutant


class NoCleanupSession(ReloadSession):
    def __del__(self) -> None:
        pass  # vLLM has no abort: initialize_layerwise_reload's meta tensors stay until finalize


class AbandonedMetaAdapter(SessionMutant):
    name = report_id = "mutant-abandoned-meta"
    targets = ("RELOAD-12",)
    suite = ("test_reload.py",)
    session_class = NoCleanupSession
