"""RELOAD-3: a reload that delivers some KV-cache scales keeps the previous values of those it does not deliver
(no fresh sentinels: v keeps the old v instead of following the new k, q keeps the old q instead of 1.0), as
vLLM's reload did before #38995."""

from loadspec.reference.reload import ReloadSession
from loadspec.reference.vocabulary import CPU_MIRRORS, FLOAT_MIRRORS, OUTPUT_BUFFERS, SCALE_NAMES
from mutants._base import SessionMutant


class KeptAbsentScalesSession(ReloadSession):
    def _finish_attention(self, layer) -> None:
        module = layer.module
        delivered = {name for name, _, _ in layer.loads if name in SCALE_NAMES}
        old = {name: getattr(module, OUTPUT_BUFFERS[name]).clone() for name in SCALE_NAMES}
        super()._finish_attention(layer)
        if not delivered:
            return
        for name in SCALE_NAMES:
            if name in delivered:
                continue
            getattr(module, OUTPUT_BUFFERS[name]).copy_(old[name])
            setattr(module, FLOAT_MIRRORS[name], float(old[name]))
            if name in CPU_MIRRORS:
                getattr(module, CPU_MIRRORS[name]).fill_(float(old[name]))


class KeptAbsentScalesAdapter(SessionMutant):
    name = report_id = "mutant-kept-absent-scales"
    targets = ("RELOAD-3",)
    suite = ("test_reload.py",)
    session_class = KeptAbsentScalesSession
