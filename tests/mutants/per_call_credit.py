"""COUNT-4, ORDER-4: each loader call credits its parameter's whole size (counting calls, not elements).

A counter that assumes one loader call fills one parameter completes a fused layer (``qkv_proj``,
``gate_up_proj``) as soon as its first shard arrives: the layer is processed with its other shards
unwritten (the hazard of field bug B24).
"""

from loadspec.reference.reload import LayerLoad, ReloadSession
from mutants._base import SessionMutant


class PerCallLayerLoad(LayerLoad):
    def add_region(self, param_name, key, elements):
        super().add_region(param_name, key, self.templates[param_name].numel)


class PerCallSession(ReloadSession):
    layer_class = PerCallLayerLoad


class PerCallCreditAdapter(SessionMutant):
    name = report_id = "mutant-per-call-credit"
    targets = ("COUNT-4", "ORDER-4")
    suite = ("test_count.py", "test_order.py")
    session_class = PerCallSession
