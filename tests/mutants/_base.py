"""Glue shared by the mutants: a reference adapter whose reloads use a given session class."""

from __future__ import annotations

from contextlib import ExitStack
from unittest import mock

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


class ScopedPatchMutant(ReferenceAdapter):
    """The reference adapter, with ``patches`` (``(target, attribute, replacement)``) applied during every call
    that builds, loads or processes: primitives and models alike (the ``ref`` oracle in the same process
    stays unpatched)."""

    patches: tuple = ()
    patched_calls = ("make_attention", "create_scale_weights", "process_attention", "auto_load", "build_model",
                     "first_load", "dummy_load", "reload")

    def __getattribute__(self, name):
        attribute = super().__getattribute__(name)
        if name in type(self).patched_calls and callable(attribute):
            patches = type(self).patches

            def patched(*args, **kwargs):
                with ExitStack() as stack:
                    for target, field, replacement in patches:
                        stack.enter_context(mock.patch.object(target, field, replacement))
                    return attribute(*args, **kwargs)
            return patched
        return attribute
