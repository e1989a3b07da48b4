"""RELOAD-14: a reload refreshes the float host mirrors (_k_scale_float ...) but not the CPU-tensor mirrors
_k_scale_cpu/_v_scale_cpu, which keep the first load's values (a refit that updates some mirrors and misses
the others: ai-dynamo/modelexpress#711 lists both kinds; first loads are correct)."""

from loadspec.reference.reload import ReloadSession
from mutants._base import SessionMutant, restore_mirrors, saved_mirrors


class StaleCpuMirrorSession(ReloadSession):
    def _finish_attention(self, layer) -> None:
        saved = saved_mirrors(layer.module, floats=False)
        super()._finish_attention(layer)
        restore_mirrors(layer.module, saved)


class StaleCpuMirrorsAdapter(SessionMutant):
    name = report_id = "mutant-stale-cpu-mirrors"
    targets = ("RELOAD-14",)
    suite = ("test_reload.py",)
    session_class = StaleCpuMirrorSession
