"""KVPROC-11: a reload writes the device scales in place but leaves the host mirrors at their old values.

The refit path copies new values into ``_k_scale`` ... and never refreshes ``_k_scale_float``,
``_q_scale_float``, ``_k_scale_cpu`` ... (ai-dynamo/modelexpress#711, fixed by #783; vllm#38975):
the kernels that read host floats keep the first load's scales. First loads are correct.
"""

from loadspec.reference.reload import ReloadSession
from mutants._base import SessionMutant, restore_mirrors, saved_mirrors


class StaleMirrorSession(ReloadSession):
    floats = True  # whether the float mirrors go stale too (False: only the CPU-tensor ones)

    def _finish_attention(self, layer) -> None:
        saved = saved_mirrors(layer.module, floats=self.floats)
        super()._finish_attention(layer)
        restore_mirrors(layer.module, saved)


class StaleReloadMirrorsAdapter(SessionMutant):
    name = report_id = "mutant-stale-reload-mirrors"
    targets = ("KVPROC-11",)
    suite = ("test_kvproc.py",)
    session_class = StaleMirrorSession
