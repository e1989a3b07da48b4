"""ORDER-1, ORDER-3: layers are processed in registration order, attention included, not deferred."""

from loadspec.reference.api import weights_of
from loadspec.reference.auto_loader import AutoWeightsLoader, write_planned
from loadspec.reference.lifecycle import owns_tensors, process_module
from loadspec.reference.reload import ReloadSession
from mutants._base import SessionMutant


class EagerAttentionSession(ReloadSession):
    def defers(self, module):
        return False


class RegistrationOrderAdapter(SessionMutant):
    name = report_id = "mutant-registration-order"
    targets = ("ORDER-1", "ORDER-3")
    suite = ("test_order.py",)
    session_class = EagerAttentionSession

    def first_load(self, model, weights):
        planned = AutoWeightsLoader(model).plan(weights_of(weights), mapper=model.mapper)
        write_planned(planned)
        model.loadspec_order = []
        for name, module in model.named_modules():
            if owns_tensors(module) or hasattr(module, "kv_cache_dtype"):
                process_module(module)
                model.loadspec_order.append(name)
        return {load.name for load in planned}
