"""Glue for the MAP mutants: a reference adapter whose mappers are instances of ``mapper_class``.

``single_stage`` and ``single_entry`` let a mutant mapper re-run the reference's own mapping one
stage or one entry at a time, so each mutant holds its one bug and nothing copied.
"""

from __future__ import annotations

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.mapper import STAGES, WeightsMapper


def single_stage(mapper: WeightsMapper, stage: str) -> WeightsMapper:
    """A reference mapper with ``mapper``'s ``stage`` entries only."""
    return WeightsMapper(**{stage: getattr(mapper, stage)})


def single_entry(stage: str, key, value) -> WeightsMapper:
    """A reference mapper with the one entry ``key -> value`` in ``stage``."""
    return WeightsMapper(**{stage: {key: value}})


def stages_of(mapper: WeightsMapper) -> dict:
    return {stage: dict(getattr(mapper, stage)) for stage in STAGES}


class MapperMutant(ReferenceAdapter):
    """The reference adapter, building and composing mappers of ``mapper_class``."""

    mapper_class: type[WeightsMapper] = WeightsMapper

    def make_mapper(self, **entries):
        return self.mapper_class(**{k: v for k, v in entries.items() if v is not None})

    def compose_mappers(self, left, right):
        return self.mapper_class(**stages_of(left | right))
