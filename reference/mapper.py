"""Weight-name mapping: ``WeightsMapper`` and its ``|`` composition.

Stages run in a fixed order (regex, substr, stacked, prefix, suffix) [MAP-1]; in
each stage every matching entry applies in insertion order [MAP-2]; an entry
mapping to ``None`` drops the weight [MAP-4].
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias, TypeVar, cast

import torch

from loadspec.reference.errors import MapperError

ShardId: TypeAlias = "str | int | tuple[int, ...]"
"""A fused parameter's shard id (``"q"``, ``0``): the second element of a ``stacked`` entry."""
STAGES = ("regex", "substr", "stacked", "prefix", "suffix")


_K = TypeVar("_K")
_V = TypeVar("_V")


def _frozen(mapping: Mapping[_K, _V] | None) -> Mapping[_K, _V]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class WeightsMapper:
    """Maps checkpoint names to engine names [MAP-1..11].

    ``regex`` maps compiled or string patterns to a replacement (backrefs allowed)
    or ``None``; ``substr``/``prefix``/``suffix`` map strings to strings or ``None``;
    ``stacked`` maps a substring to ``(replacement, shard_id)``.
    """

    regex: Mapping[str | re.Pattern[str], str | None] = field(default_factory=dict)
    substr: Mapping[str, str | None] = field(default_factory=dict)
    stacked: Mapping[str, tuple[str, ShardId]] = field(default_factory=dict)
    prefix: Mapping[str, str | None] = field(default_factory=dict)
    suffix: Mapping[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        compiled: dict[re.Pattern[str], str | None] = {}
        for pattern, new in dict(self.regex).items():
            if isinstance(pattern, str):
                try:
                    pattern = re.compile(pattern)
                except re.error as exc:
                    raise MapperError(f"regex entry {pattern!r} does not compile: {exc}") from None
            compiled[pattern] = new
        object.__setattr__(self, "regex", _frozen(compiled))
        for stage in ("substr", "prefix", "suffix"):
            entries = dict(getattr(self, stage))
            for key in entries:
                if not isinstance(key, str) or not key:
                    raise MapperError(f"{stage} entry {key!r}: keys must be non-empty strings [MAP-9]")
            object.__setattr__(self, stage, _frozen(entries))
        stacked = dict(self.stacked)
        for key, value in stacked.items():
            if not isinstance(key, str) or not key:
                raise MapperError(f"stacked entry {key!r}: keys must be non-empty strings [MAP-9]")
            if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)):
                raise MapperError(f"stacked entry {key!r}: value must be (replacement, shard_id), got {value!r}")
        object.__setattr__(self, "stacked", _frozen(stacked))

    # ---------------------------------------------------------------- compose
    def __or__(self, other: WeightsMapper) -> WeightsMapper:
        """A new mapper with both operands' entries; ``other`` wins on equal keys [MAP-5]."""
        if not isinstance(other, WeightsMapper):
            return NotImplemented
        return WeightsMapper(**{stage: {**getattr(self, stage), **getattr(other, stage)} for stage in STAGES})

    def __bool__(self) -> bool:
        return any(getattr(self, stage) for stage in STAGES)

    # ----------------------------------------------------------------- map
    def map_name_with_shard(self, name: str) -> tuple[str, ShardId | None] | None:
        """``(new_name, shard_id or None)``, or ``None`` when an entry drops the name [MAP-1..4, MAP-11]."""
        shard_id: ShardId | None = None
        regex = cast("Mapping[re.Pattern[str], str | None]", self.regex)  # __post_init__ compiled every key
        for pattern, new in regex.items():
            if pattern.search(name):
                if new is None:
                    return None
                name = pattern.sub(new, name)
        for old, new in self.substr.items():
            if old in name:
                if new is None:
                    return None
                name = name.replace(old, new, 1)
        for old, (new, shard) in self.stacked.items():
            if old in name:
                name = name.replace(old, new, 1)
                shard_id = shard
        for old, new in self.prefix.items():
            if name.startswith(old):
                if new is None:
                    return None
                name = new + name[len(old):]
        for old, new in self.suffix.items():
            if name.endswith(old):
                if new is None:
                    return None
                name = name[: len(name) - len(old)] + new
        return name, shard_id

    def map_name(self, name: str) -> str | None:
        """The mapped name, or ``None`` when the weight is dropped [MAP-4]."""
        mapped = self.map_name_with_shard(name)
        return None if mapped is None else mapped[0]

    def apply(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor, ShardId | None]]:
        """Yield ``(mapped_name, tensor, shard_id)``, skipping dropped names; tensors are never touched [MAP-10]."""
        for name, tensor in weights:
            mapped = self.map_name_with_shard(name)
            if mapped is not None:
                yield mapped[0], tensor, mapped[1]

    def __repr__(self) -> str:
        parts: list[str] = []
        for stage in STAGES:
            entries = getattr(self, stage)
            if entries:
                shown = {getattr(k, "pattern", k): v for k, v in entries.items()}
                parts.append(f"{stage}={shown!r}")
        return f"WeightsMapper({', '.join(parts)})"


EMPTY_MAPPER = WeightsMapper()
