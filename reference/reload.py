"""Layerwise reload: record -> begin -> load (any number of calls) -> finish.

``record_model_format`` runs at build time and keeps each layer's checkpoint-format
parameters as meta templates. ``ReloadSession`` swaps those templates in, counts
every element that arrives through ``copy_`` against them [COUNT-1..4], and
buffers the loaded tensors. A layer is processed the moment its last element
arrives [ORDER-4]; attention layers wait for ``finish`` [ORDER-1]. A complete
layer whose processing keeps its layout replays its loads straight into the
kernel tensors (each byte written once); any other layer is materialized,
processed, and copied into its kernel tensors, which stay the same objects
[RELOAD-1]. A partial layer is never written [RELOAD-6].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

import torch

from loadspec.reference.auto_loader import AutoWeightsLoader, write_planned
from loadspec.reference.copy_counter import CopyCounter, RegionKey
from loadspec.reference.errors import LoadspecError, PartialLayerError
from loadspec.reference.layers.attention import AttentionLayerBase
from loadspec.reference.lifecycle import is_attention, process_module
from loadspec.reference.loaders import WeightLoader, default_weight_loader
from loadspec.reference.mapper import ShardId, WeightsMapper
from loadspec.reference.vocabulary import SCALE_NAMES

FORMAT_ATTR = "_loadspec_format"


@dataclass(frozen=True)
class TensorTemplate:
    """Checkpoint-format metadata of one parameter: class, shape, dtype, attributes."""

    cls: type[torch.nn.Parameter]
    shape: tuple[int, ...]
    dtype: torch.dtype
    attrs: dict[str, Any]  # the tensor's instance attributes: loaders, names, whatever a layer set

    @classmethod
    def of(cls, tensor: torch.nn.Parameter) -> TensorTemplate:
        return cls(type(tensor), tuple(tensor.shape), tensor.dtype, dict(tensor.__dict__))

    def materialize(self, device: torch.device | str) -> torch.nn.Parameter:
        """A parameter of this class, shape, dtype and attributes on ``device`` (``meta`` for counting)."""
        param = torch.nn.Parameter(torch.empty(self.shape, dtype=self.dtype, device=device), requires_grad=False)
        param.__class__ = self.cls
        param.__dict__.update(self.attrs)
        return param

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def loader(self) -> WeightLoader:
        """The parameter's own ``weight_loader``, else its class's, else the default [SCALE-7]."""
        loader = self.attrs.get("weight_loader") or getattr(self.cls, "weight_loader", default_weight_loader)
        return cast(WeightLoader, loader)  # attributes are untyped; a layer sets a loader there or on the class


@dataclass
class ModelFormat:
    """Recorded checkpoint format: per layer, its parameters' templates; tied aliases."""

    layers: dict[str, dict[str, TensorTemplate]]
    aliases: dict[tuple[str, str], tuple[str, str]]


def record_model_format(model: torch.nn.Module) -> ModelFormat:
    """Record every layer's checkpoint-format parameters; call right after building [RELOAD-1]."""
    owners: dict[int, tuple[str, str]] = {}
    layers: dict[str, dict[str, TensorTemplate]] = {}
    aliases: dict[tuple[str, str], tuple[str, str]] = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in owners:
                aliases[(module_name, name)] = owners[id(param)]  # tied weight [RELOAD-8]
                continue
            owners[id(param)] = (module_name, name)
            layers.setdefault(module_name, {})[name] = TensorTemplate.of(param)
        if is_attention(module):
            layers.setdefault(module_name, {})
    fmt = ModelFormat(layers, aliases)
    object.__setattr__(model, FORMAT_ATTR, fmt)
    return fmt


@dataclass
class LayerLoad:
    """One layer's state during a reload."""

    name: str
    module: torch.nn.Module
    templates: dict[str, TensorTemplate]
    kernel: dict[str, torch.nn.Parameter]
    loads: list[tuple[str, torch.Tensor, ShardId | None]] = field(default_factory=list)
    regions: dict[str, dict[RegionKey, int]] = field(default_factory=dict)
    processed: bool = False

    @property
    def total(self) -> int:
        return sum(t.numel for t in self.templates.values())

    def counted(self, param_name: str | None = None) -> int:
        """Elements counted so far, each region once and capped per parameter [COUNT-3]."""
        names = [param_name] if param_name else list(self.templates)
        return sum(min(sum(self.regions.get(n, {}).values()), self.templates[n].numel) for n in names)

    def missing(self) -> list[str]:
        """Parameters that did not receive all their elements."""
        return [f"{self.name}.{n} ({self.counted(n)} of {t.numel} elements)"
                for n, t in self.templates.items() if self.counted(n) < t.numel]


@dataclass
class ReloadReport:
    """What a reload did: layers processed in order, layers left untouched, element counts."""

    processed: list[str] = field(default_factory=list)
    untouched: list[str] = field(default_factory=list)
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    loaded: set[str] = field(default_factory=set)


def _set_param(module: torch.nn.Module, name: str, value: torch.nn.Parameter | None) -> None:
    if name in module._parameters or hasattr(module, name):
        delattr(module, name)
    if value is not None:
        module.register_parameter(name, value)


class ReloadSession:
    """One layerwise reload of ``model`` [RELOAD-1..10]; use as a context manager or call ``finish``."""

    layer_class = LayerLoad

    def __init__(self, model: torch.nn.Module, *, mapper: WeightsMapper | None = None) -> None:
        fmt = getattr(model, FORMAT_ATTR, None)
        if fmt is None:
            raise LoadspecError("the model was not recorded: call record_model_format(model) after building it")
        self.model = model
        self.mapper: WeightsMapper | None = getattr(model, "mapper", None) if mapper is None else mapper
        self.format: ModelFormat = fmt
        self.report = ReloadReport()
        # live: the order so far [ORDER-1, ORDER-4]; Module.__setattr__ is typed for tensors and modules only
        model.loadspec_order = self.report.processed  # type: ignore[assignment]
        self._modules = dict(model.named_modules())
        self.layers: dict[str, LayerLoad] = {}
        self._processed_owner: dict[int, str] = {}
        self._finished = False
        self._begin()

    # --------------------------------------------------------------- begin
    def _begin(self) -> None:
        for layer_name, templates in self.format.layers.items():
            module = self._modules[layer_name]
            kernel = {name: param for name, param in module._parameters.items() if param is not None}
            layer = self.layer_class(layer_name, module, templates, kernel)
            self.layers[layer_name] = layer
            for name in kernel:
                delattr(module, name)
            for name, template in templates.items():
                meta = template.materialize("meta")
                # vLLM's convention: the loader is an attribute of the parameter, which torch's type does not declare
                meta.weight_loader = self._counting_loader(layer, name, template)  # type: ignore[attr-defined]
                module.register_parameter(name, meta)
        self._place_aliases()

    def _place_aliases(self) -> None:
        for (module_name, name), (owner, owner_name) in self.format.aliases.items():
            _set_param(self._modules[module_name], name, self._modules[owner]._parameters[owner_name])

    def _counting_loader(self, layer: LayerLoad, name: str, template: TensorTemplate) -> WeightLoader:
        original = template.loader

        def counting_loader(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None:
            if layer.processed:
                raise LoadspecError(
                    f"{layer.name}.{name}: delivered after layer {layer.name!r} was already processed "
                    f"in this reload [RELOAD-9]")
            args = (param, loaded_weight) if shard_id is None else (param, loaded_weight, shard_id)
            counter = CopyCounter()
            with counter:
                original(*args)  # against the meta template: counts, writes no data
            regions = layer.regions.setdefault(name, {})
            regions.update(counter.per_destination)
            layer.loads.append((name, loaded_weight, shard_id))
            if not self.defers(layer.module) and layer.counted() >= layer.total:
                self._process_layer(layer)  # the last element arrived [ORDER-4]

        counting_loader.original_loader = original  # type: ignore[attr-defined]  # a function attribute, for inspection
        return counting_loader

    def defers(self, module: torch.nn.Module) -> bool:
        """Whether ``module`` waits for ``finish`` instead of being processed when complete [ORDER-1]."""
        return is_attention(module)

    # ---------------------------------------------------------------- load
    def load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Deliver weights; may be called any number of times [RELOAD-10]. A rejected call writes nothing [LOAD-6]."""
        if self._finished:
            raise LoadspecError("this reload session is finished")
        planned = AutoWeightsLoader(self.model).plan(weights, mapper=self.mapper, guard=self._reject_processed)
        write_planned(planned)
        loaded = {load.name for load in planned}
        self.report.loaded |= loaded
        return loaded

    def _reject_processed(self, source: str, name: str, param: torch.Tensor) -> None:
        layer = self._processed_owner.get(id(param))
        if layer is not None:
            raise LoadspecError(f"checkpoint weight {source!r} (-> {name!r}): delivered after layer {layer!r} "
                                f"was already processed in this reload [RELOAD-9]")

    # ------------------------------------------------------------- process
    def _replay(self, layer: LayerLoad, targets: Mapping[str, torch.Tensor]) -> None:
        for name, loaded_weight, shard_id in layer.loads:
            original = layer.templates[name].loader
            args = (targets[name], loaded_weight) if shard_id is None else (targets[name], loaded_weight, shard_id)
            original(*args)

    def _restore_kernel(self, layer: LayerLoad) -> None:
        for name in list(layer.module._parameters):
            delattr(layer.module, name)
        for name, tensor in layer.kernel.items():
            layer.module.register_parameter(name, tensor)

    @torch.no_grad()
    def _process_layer(self, layer: LayerLoad) -> None:
        module = layer.module
        method = getattr(module, "quant_method", None)
        keeps_layout = getattr(method, "preserves_layout", getattr(module, "preserves_layout", False)) and all(
            name in layer.kernel and tuple(layer.kernel[name].shape) == t.shape and layer.kernel[name].dtype == t.dtype
            for name, t in layer.templates.items())
        if keeps_layout:
            self._replay(layer, layer.kernel)  # each byte written once
        else:
            device = next(iter(layer.kernel.values())).device
            fresh = {name: t.materialize(device) for name, t in layer.templates.items()}
            for name, param in fresh.items():
                _set_param(module, name, param)
            self._replay(layer, fresh)
            process_module(module)
            self._write_back(layer)
        self._restore_kernel(layer)
        self._place_aliases()
        layer.processed = True
        self._processed_owner.update({id(t): layer.name for t in layer.kernel.values()})
        self.report.processed.append(layer.name)

    def _write_back(self, layer: LayerLoad) -> None:
        """Copy a processed layer's tensors into its kernel tensors, which stay the same objects [RELOAD-1]."""
        for name, kernel in layer.kernel.items():
            processed = layer.module._parameters[name]
            if processed is None:
                raise LoadspecError(f"{layer.name}.{name}: processing left the parameter unset (None)")
            if processed.shape != kernel.shape or processed.dtype != kernel.dtype:
                raise LoadspecError(
                    f"{layer.name}.{name}: processing produced {tuple(processed.shape)} {processed.dtype}, "
                    f"but the kernel tensor is {tuple(kernel.shape)} {kernel.dtype}")
            kernel.data.copy_(processed.data)

    @torch.no_grad()
    def _finish_attention(self, layer: LayerLoad) -> None:
        module = cast(AttentionLayerBase, layer.module)  # finish calls this for attention layers only
        for name in SCALE_NAMES:
            if name in module._parameters:
                delattr(module, name)
        if layer.loads and module.quant_method is not None:
            device = module._k_scale.device
            module.quant_method.create_weights(module, device=device)  # fresh sentinels [RELOAD-3]
            for name in SCALE_NAMES:
                getattr(module, name).loadspec_name = f"{layer.name}.{name}"
            self._replay(layer, {name: getattr(module, name) for name in layer.templates})
            try:
                module.quant_method.process_weights_after_loading(module)
            finally:
                for name in SCALE_NAMES:
                    if name in module._parameters:
                        delattr(module, name)
        module.process_weights_after_loading()
        layer.processed = True
        self.report.processed.append(layer.name)

    # -------------------------------------------------------------- finish
    def finish(self) -> ReloadReport:
        """Process deferred attention, restore untouched layers, reject partial ones [RELOAD-3..6, ORDER-1]."""
        if self._finished:
            return self.report
        self._finished = True
        failures: list[LoadspecError] = []
        partial: list[str] = []
        for layer in self.layers.values():
            self.report.counts[layer.name] = (layer.counted(), layer.total)
            if layer.processed or is_attention(layer.module):
                continue
            if layer.loads:
                partial.extend(self._handle_partial(layer))
            else:
                self._restore_kernel(layer)
                self.report.untouched.append(layer.name)  # [RELOAD-5]
        self._place_aliases()
        for layer in self.layers.values():
            if is_attention(layer.module) and not layer.processed:
                try:
                    self._finish_attention(layer)
                except LoadspecError as exc:
                    failures.append(exc)
                if not layer.loads:
                    self.report.untouched.append(layer.name)
        if partial:
            failures.insert(0, PartialLayerError(
                "reload delivered only part of these weights (the layers keep their previous values) "
                f"[RELOAD-6]: {'; '.join(partial)}"))
        if failures:
            message = "\n".join(str(f) for f in failures)
            raise type(failures[0])(message)
        return self.report

    def _handle_partial(self, layer: LayerLoad) -> list[str]:
        """Leave a partial layer as it was and name what it lacks [RELOAD-6]."""
        self._restore_kernel(layer)
        return layer.missing()

    def abort(self) -> None:
        """Put every unprocessed layer back as it was; nothing delivered since is applied."""
        if self._finished:
            return
        self._finished = True
        for layer in self.layers.values():
            if not layer.processed:
                if is_attention(layer.module):
                    for name in SCALE_NAMES:
                        if name in layer.module._parameters:
                            delattr(layer.module, name)
                else:
                    self._restore_kernel(layer)
        self._place_aliases()

    def __enter__(self) -> ReloadSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


def reload_weights(model: torch.nn.Module, weights: Iterable[tuple[str, torch.Tensor]], *,
                   mapper: WeightsMapper | None = None) -> ReloadReport:
    """Reload ``weights`` into a processed model layer by layer [RELOAD-1..10]."""
    session = ReloadSession(model, mapper=mapper)
    try:
        session.load(weights)
    except BaseException:
        session.abort()
        raise
    return session.finish()
