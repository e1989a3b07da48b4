"""RELOAD-14: a reload refreshes the float host mirrors (_k_scale_float ...) but not the CPU-tensor mirrors
_k_scale_cpu/_v_scale_cpu, which keep the first load's values (a refit that updates some mirrors and misses
the others: ai-dynamo/modelexpress#711 lists both kinds; first loads are correct)."""

from mutants._base import SessionMutant
from mutants.stale_reload_mirrors import StaleMirrorSession


class StaleCpuMirrorSession(StaleMirrorSession):
    floats = False


class StaleCpuMirrorsAdapter(SessionMutant):
    name = report_id = "mutant-stale-cpu-mirrors"
    targets = ("RELOAD-14",)
    suite = ("test_reload.py",)
    session_class = StaleCpuMirrorSession
