"""The automatic loader: map names, resolve them to parameters, validate everything, then write.

Validation runs over the whole input before the first write, so any rejection
leaves the model exactly as it was [LOAD-6].
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Protocol

import torch

from loadspec.reference.errors import DuplicateSourceError, LoadspecError, NotLoadableError, UnknownWeightError
from loadspec.reference.loaders import check_loadable, get_weight_loader
from loadspec.reference.mapper import EMPTY_MAPPER, ShardId, WeightsMapper
from loadspec.reference.vocabulary import OUTPUT_BUFFERS, SCALE_NAMES

KV_SCALE_NAME = re.compile(rf"\.attn\.({'|'.join(SCALE_NAMES)})$")


@dataclass(frozen=True)
class PlannedLoad:
    """One validated load: checkpoint name, mapped name, target parameter, tensor, shard id."""

    source: str
    name: str
    param: torch.Tensor
    tensor: torch.Tensor
    shard_id: ShardId | None


class CacheScaleConfig(Protocol):
    """What the loader needs of a quant config: its cache-scale mapper [NAMES-10]."""

    def get_cache_scale_mapper(self) -> WeightsMapper: ...


Guard = Callable[[str, str, torch.Tensor], None]
"""``guard(source, name, param)``: raises to reject a resolved weight."""


def find_quant_config(module: torch.nn.Module) -> CacheScaleConfig | None:
    """The ``quant_config`` of ``module`` or of its first direct child that has one [NAMES-10]."""
    for candidate in (module, *module.children()):
        config: CacheScaleConfig | None = getattr(candidate, "quant_config", None)
        if config is not None:
            return config
    return None


OUTPUT_BUFFER_NAMES = frozenset(OUTPUT_BUFFERS.values())


def processing_owned(owner: torch.nn.Module, name: str) -> bool:
    """Whether buffer ``name`` of ``owner`` is an attention output scale, written only by processing [LOAD-15]."""
    return name in OUTPUT_BUFFER_NAMES and hasattr(owner, "quant_method") and hasattr(owner, "kv_cache_dtype")


def _walk(root: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """One pass over the module tree by its ``_modules`` dicts: the loadable tensors by qualified name and the
    attention output scale names [LOAD-9, LOAD-15].

    Parameters are listed under every path (``named_parameters(remove_duplicate=False)``), then the persistent
    buffers of each module under its first path (``named_modules()``, each tensor once per module); the result
    equals those walks, which cost about twice as much. Nothing is cached: the current registrations are read
    every call, so no structural change can leave a stale entry, and no replaced tensor is kept alive.
    """
    owned_by_processing = processing_owned  # looked up per call: a patched module function is honoured
    targets: dict[str, torch.Tensor] = {}
    buffers: list[tuple[str, torch.Tensor]] = []
    owned: list[str] = []
    visited: set[int] = set()
    stack: list[tuple[str, torch.nn.Module]] = [("", root)]
    while stack:
        path, module = stack.pop()
        dot = f"{path}." if path else ""
        for name, param in module._parameters.items():
            if param is not None:
                targets[dot + name] = param
        if id(module) not in visited:
            visited.add(id(module))
            if module._buffers:
                seen: set[int] = set()
                non_persistent = module._non_persistent_buffers_set
                for name, buffer in module._buffers.items():
                    if buffer is None or id(buffer) in seen:
                        continue
                    seen.add(id(buffer))
                    if owned_by_processing(module, name):
                        owned.append(dot + name)
                    elif name not in non_persistent:
                        buffers.append((dot + name, buffer))
        children = module._modules
        if children:
            stack.extend(reversed([(dot + name, child) for name, child in children.items() if child is not None]))
    targets.update(buffers)
    return targets, owned


def loadable_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters (tied ones under every name) and persistent buffers, by qualified name [LOAD-9].

    An attention layer's output scales (``_k_scale`` ...) are persistent buffers but not loadable [LOAD-15].
    """
    return _walk(module)[0]


def output_buffer_names(module: torch.nn.Module) -> set[str]:
    """Qualified names of every attention output scale buffer under ``module`` [LOAD-15]."""
    return set(_walk(module)[1])


MAPPED_NAMES_ATTR = "_loadspec_mapped_names"
"""Attribute of a planned module holding its ``_NameMemo`` (names only: no tensor, so nothing is kept alive)."""


class _NameMemo:
    """``WeightsMapper.map_name_with_shard`` results per checkpoint name, for one mapper's entries [MAP-1..4]."""

    def __init__(self) -> None:
        self.mapper_key: tuple[object, ...] | None = None
        self.mapped: dict[str, tuple[str, ShardId | None] | None] = {}

    def name_map(self, mapper: WeightsMapper) -> Callable[[str], tuple[str, ShardId | None] | None]:
        """``mapper.map_name_with_shard``, memoized per checkpoint name while the model is planned with the same
        entries. Only for ``WeightsMapper`` itself (a pure function of its entries); a subclass is called every
        time."""
        if type(mapper) is not WeightsMapper:
            return mapper.map_name_with_shard
        # entries apply in order, so the key is order-sensitive (dict equality is not); read every call, so an
        # entry changed in place is seen
        key = tuple(tuple(getattr(mapper, stage.name).items()) for stage in fields(WeightsMapper))
        if key != self.mapper_key:
            self.mapper_key, self.mapped = key, {}
        mapped = self.mapped

        def map_name(source: str) -> tuple[str, ShardId | None] | None:
            try:
                return mapped[source]
            except KeyError:
                result = mapped[source] = mapper.map_name_with_shard(source)
                return result

        return map_name


def _name_memo(module: torch.nn.Module) -> _NameMemo:
    memo = module.__dict__.get(MAPPED_NAMES_ATTR)
    if not isinstance(memo, _NameMemo):
        memo = _NameMemo()
        object.__setattr__(module, MAPPED_NAMES_ATTR, memo)
    return memo


class AutoWeightsLoader:
    """Loads ``(name, tensor)`` pairs into a module tree [LOAD-3..10, NAMES-10]; caller lists are never mutated."""

    def __init__(self, module: torch.nn.Module, *, skip_prefixes: Iterable[str] = (),
                 skip_substrs: Iterable[str] = (), ignore_unexpected_prefixes: Iterable[str] = (),
                 ignore_unexpected_suffixes: Iterable[str] = ()) -> None:
        self.module = module
        self.skip_prefixes = tuple(skip_prefixes)
        self.skip_substrs = tuple(skip_substrs)
        self.ignore_unexpected_prefixes = tuple(ignore_unexpected_prefixes)
        self.ignore_unexpected_suffixes = tuple(ignore_unexpected_suffixes)

    def effective_mapper(self, mapper: WeightsMapper | None) -> WeightsMapper:
        """``mapper | quant_config.get_cache_scale_mapper()`` when a quant config is found [NAMES-10]."""
        mapper = mapper or EMPTY_MAPPER
        config = find_quant_config(self.module)
        return mapper | config.get_cache_scale_mapper() if config is not None else mapper

    def _skipped(self, name: str) -> bool:
        return name.startswith(self.skip_prefixes) or bool(self.skip_substrs) and any(
            s in name for s in self.skip_substrs)

    def _ignorable(self, name: str) -> bool:
        if KV_SCALE_NAME.search(name):
            return False  # a KV-cache scale is never dropped silently [LOAD-8]
        return name.startswith(self.ignore_unexpected_prefixes) or name.endswith(self.ignore_unexpected_suffixes)

    def plan(self, weights: Iterable[tuple[str, torch.Tensor]], *, mapper: WeightsMapper | None = None,
             guard: Guard | None = None) -> list[PlannedLoad]:
        """Map, resolve and validate every weight without writing anything [LOAD-4, LOAD-5, LOAD-6, LOAD-10].

        ``guard(source, name, param)`` may raise to reject a resolved weight before its shape is checked.
        Two sources for one parameter (the whole of it and a shard, or two names of one tied tensor) are
        rejected naming both [LOAD-14]; an attention output buffer by name is rejected [LOAD-15].
        """
        mapper = self.effective_mapper(mapper)
        map_name = _name_memo(self.module).name_map(mapper)
        targets = loadable_tensors(self.module)
        owned: set[str] | None = None  # only a name that resolves to nothing needs them
        planned: list[PlannedLoad] = []
        seen: dict[tuple[str, ShardId | None], str] = {}
        per_param: dict[int, list[tuple[str, str, ShardId | None]]] = {}
        for source, tensor in weights:
            mapped = map_name(source)
            if mapped is None:
                continue  # dropped by the mapper [MAP-4]
            name, shard_id = mapped
            if self._skipped(name):
                continue  # skip rules see mapped names [LOAD-5]
            param = targets.get(name)
            if param is None:
                if owned is None:
                    owned = output_buffer_names(self.module)
                if name in owned:
                    raise NotLoadableError(
                        f"checkpoint weight {source!r} (-> {name!r}) addresses an attention output scale, which "
                        f"only processing writes; give the layer's k_scale/v_scale/q_scale/prob_scale instead "
                        f"[LOAD-15]")
                if self._ignorable(name):
                    continue
                raise self._unknown(source, name, targets)
            key = (name, shard_id)
            if key in seen:
                raise DuplicateSourceError(
                    f"{source!r} and {seen[key]!r} both map to {name!r}"
                    + (f" shard {shard_id!r}" if shard_id is not None else "")
                    + "; a checkpoint must give it once [LOAD-14]")
            seen[key] = source
            clashes = [(other_source, other_name, other_shard)
                       for other_source, other_name, other_shard in per_param.get(id(param), ())
                       if other_shard is None or shard_id is None or other_shard == shard_id]
            if clashes:
                def part(shard: ShardId | None) -> str:
                    return "the whole parameter" if shard is None else f"shard {shard!r}"
                what = name if all(n == name for _, n, _ in clashes) else " / ".join(
                    dict.fromkeys([*(n for _, n, _ in clashes), name]))
                given = "; ".join(f"{src!r} gives {part(shard)}" for src, _, shard in clashes)
                raise DuplicateSourceError(
                    f"{given}, and {source!r} gives {part(shard_id)}: two sources for {what!r} (one tensor); "
                    f"a checkpoint must give each value once [LOAD-14]")
            per_param.setdefault(id(param), []).append((source, name, shard_id))
            if guard is not None:
                guard(source, name, param)
            try:
                check_loadable(param, tensor, shard_id)
            except LoadspecError as exc:
                raise type(exc)(f"checkpoint weight {source!r} (-> {name!r}): {exc}") from None
            planned.append(PlannedLoad(source, name, param, tensor, shard_id))
        return planned

    def _unknown(self, source: str, name: str, targets: Mapping[str, torch.Tensor]) -> LoadspecError:
        parent = name
        while "." in parent:
            parent = parent.rsplit(".", 1)[0]
            if parent in targets:
                return UnknownWeightError(
                    f"checkpoint weight {source!r} (-> {name!r}) addresses below the parameter {parent!r} [LOAD-10]")
        close = difflib.get_close_matches(name, list(targets), n=3, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        return UnknownWeightError(
            f"checkpoint weight {source!r} (-> {name!r}) matches no parameter of "
            f"{type(self.module).__name__}{hint}")

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], *, mapper: WeightsMapper | None = None
                     ) -> set[str]:
        """Load every weight; return the mapped names loaded [LOAD-3]. Rejections write nothing [LOAD-6]."""
        planned = self.plan(weights, mapper=mapper)
        write_planned(planned)
        return {load.name for load in planned}


@torch.no_grad()
def write_planned(planned: list[PlannedLoad]) -> None:
    """Write validated loads through each parameter's loader."""
    for load in planned:
        loader = get_weight_loader(load.param)
        if load.shard_id is None:
            loader(load.param, load.tensor)
        else:
            loader(load.param, load.tensor, load.shard_id)
