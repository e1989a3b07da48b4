"""Glue shared by the mutants: a reference adapter whose reloads use a given session class."""

from __future__ import annotations

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.api import weights_of
from loadspec.reference.reload import ReloadSession


class SessionMutant(ReferenceAdapter):
    """The reference adapter, with reloads run by ``session_class``."""

    session_class = ReloadSession

    def open_reload(self, model):
        return self.session_class(model)

    def reload(self, model, weights) -> None:
        session = self.session_class(model)
        try:
            session.load(weights_of(weights))
        except BaseException:
            session.abort()
            raise
        session.finish()


class ScaleLoaderMutant(ReferenceAdapter):
    """The reference adapter, with every new scale parameter given ``scale_loader`` as its instance loader."""

    @staticmethod
    def scale_loader(param, weight, shard_id=None) -> None:
        raise NotImplementedError

    def new_scale_parameter(self, *, device):
        param = super().new_scale_parameter(device=device)
        param.weight_loader = self.scale_loader
        return param
