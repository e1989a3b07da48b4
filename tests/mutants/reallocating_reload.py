"""RELOAD-1: reload registers the freshly processed tensors instead of copying into the kernel tensors."""

from loadspec.reference.reload import ReloadSession
from mutants._base import SessionMutant


class ReallocatingSession(ReloadSession):
    def _write_back(self, layer):
        layer.kernel.update({name: layer.module._parameters[name] for name in layer.kernel})


class ReallocatingAdapter(SessionMutant):
    name = report_id = "mutant-reallocating-reload"
    targets = ("RELOAD-1",)
    suite = ("test_reload.py",)
    session_class = ReallocatingSession
