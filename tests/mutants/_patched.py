"""Glue for mutants that switch one check of the reference off while it loads or reloads a model."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from unittest import mock

from loadspec.conformance.adapters.reference import ReferenceAdapter


class PatchedAdapter(ReferenceAdapter):
    """The reference adapter, with ``patches`` (``(target, attribute, replacement)``) applied during model loads."""

    patches: tuple = ()

    @contextmanager
    def _patched(self):
        with ExitStack() as stack:
            for target, attribute, replacement in self.patches:
                stack.enter_context(mock.patch.object(target, attribute, replacement))
            yield

    def first_load(self, model, weights):
        with self._patched():
            return super().first_load(model, weights)

    def reload(self, model, weights) -> None:
        with self._patched():
            super().reload(model, weights)
