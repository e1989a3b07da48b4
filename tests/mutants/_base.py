"""Glue shared by the mutants: a reference adapter whose reloads use a given session class."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from unittest import mock

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.api import weights_of
from loadspec.reference.auto_loader import AutoWeightsLoader
from loadspec.reference.cache_scale_mappers import CACHE_SCALE_MAPPER
from loadspec.reference.mapper import WeightsMapper
from loadspec.reference.quant_config import QuantConfig
from loadspec.reference.reload import ReloadSession
from loadspec.reference.vocabulary import CPU_MIRRORS, FLOAT_MIRRORS


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
    stays unpatched). A session from ``open_reload`` runs its ``load``/``finish`` unpatched."""

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


def without_regex(mapper: WeightsMapper, *fragments: str) -> WeightsMapper:
    """``mapper`` minus its regex entries whose pattern contains any of ``fragments``."""
    return WeightsMapper(regex={p: v for p, v in mapper.regex.items()
                                if not any(f in getattr(p, "pattern", p) for f in fragments)})


@dataclass(frozen=True)
class MappedConfig(QuantConfig):
    """A reference quantization config whose cache-scale mapper is ``mapper_for(quant_method)``."""

    mapper_for: Callable[[str], WeightsMapper] = field(default=lambda method: CACHE_SCALE_MAPPER, compare=False)

    def get_cache_scale_mapper(self) -> WeightsMapper:
        return self.mapper_for(self.quant_method)


class CacheScaleMapperMutant(ReferenceAdapter):
    """The reference adapter whose quantization configs return ``mapper_for(quant_method)`` as their cache-scale
    mapper: in ``cache_scale_mapper``, the automatic loader and every model it builds."""

    @staticmethod
    def mapper_for(quant_method: str) -> WeightsMapper:
        return CACHE_SCALE_MAPPER

    def cache_scale_mapper(self, quant_method):
        return self.mapper_for(quant_method)

    def auto_load(self, module, weights, *, mapper=None, quant_method=None, skip_prefixes=(), skip_substrs=()):
        if quant_method is not None:
            module.quant_config = MappedConfig(quant_method, self.mapper_for)
        loader = AutoWeightsLoader(module, skip_prefixes=skip_prefixes, skip_substrs=skip_substrs)
        return loader.load_weights(weights, mapper=mapper)

    def build_model(self, spec, *, device):
        model = super().build_model(spec, device=device)
        if model.quant_config is not None:
            model.quant_config = MappedConfig(model.quant_config.quant_method, self.mapper_for)
        return model


def saved_mirrors(module, *, floats: bool = True) -> tuple[dict, dict]:
    """An attention ``module``'s host mirrors as they are now: the float ones (unless ``floats=False``) and copies
    of the CPU-tensor ones; ``restore_mirrors`` puts them back (the mutants that leave mirrors stale)."""
    return ({m: getattr(module, m) for m in FLOAT_MIRRORS.values()} if floats else {},
            {m: getattr(module, m).clone() for m in CPU_MIRRORS.values()})


def restore_mirrors(module, saved: tuple[dict, dict]) -> None:
    """Put back the host mirrors ``saved_mirrors`` took."""
    floats, cpu = saved
    for mirror, value in floats.items():
        setattr(module, mirror, value)
    for mirror, value in cpu.items():
        getattr(module, mirror).copy_(value)
