"""COUNT-6: every delivery counts again, so a shard delivered twice completes a layer early (prime-rl#2714)."""

from loadspec.reference.reload import LayerLoad, ReloadSession
from mutants._base import SessionMutant


class NaiveLayerLoad(LayerLoad):
    def counted(self, param_name=None):
        names = [param_name] if param_name else list(self.templates)
        return sum(min(sum(w.numel() for n, w, _ in self.loads if n == name), self.templates[name].numel)
                   for name in names)


class NaiveCountSession(ReloadSession):
    layer_class = NaiveLayerLoad


class NaiveCountAdapter(SessionMutant):
    name = report_id = "mutant-naive-count"
    targets = ("COUNT-6",)
    suite = ("test_count.py",)
    session_class = NaiveCountSession
