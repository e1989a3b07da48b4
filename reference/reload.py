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

Two modes:

* **streaming** (``ReloadSession(model)``, the default of a session: vLLM's semantics). Each
  ``load`` call is validated whole before it writes [LOAD-6], but a layer is processed and written
  as soon as its last element arrives, so a later rejection (a bad tensor in a later call, a partial
  layer or a bad scale found at ``finish``) leaves the layers processed before it with their new
  values. Memory: only the current call's tensors and one layer's buffered loads.
* **transactional** (``ReloadSession(model, transactional=True)``; the default of the one-call
  ``reload_weights``/``api.reload``). ``load`` validates and stages; ``finish`` checks the whole
  input (partial layers included) before the first write, backs up every tensor and host mirror the
  reload can write, then applies the staged loads with the streaming machinery (same processing
  order, same result) and restores the backup if anything still fails, ``KeyboardInterrupt``
  included: every layer is committed or none [RELOAD-11]. Memory: the staged input tensors are kept
  alive until ``finish`` (a one-call reload holds them anyway while it validates), plus one copy
  of the written layers' kernel tensors (``ReloadSession.backup_bytes``); see ``staged_bytes``.
  Measured for a full reload (DEFAULT_SPEC, MLA, and a 4-layer hidden-256 FP8 model of 11.5 MB):
  staged = the input's bytes (0.88-1.00x the model's kernel bytes), backup = 1.00x, so the peak
  extra is about 2x the model (1x more than a streaming one-call reload, which also holds its input).

In both modes ``abort()``, leaving a ``with`` block by an exception, or dropping an unfinished
session (garbage collection) puts back every layer that was not yet written, so no meta (data-less)
tensor stays registered [RELOAD-12].
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

import torch

from loadspec.reference.auto_loader import AutoWeightsLoader, PlannedLoad, write_planned
from loadspec.reference.copy_counter import CopyCounter, RegionKey
from loadspec.reference.errors import DuplicateSourceError, LoadspecError, PartialLayerError
from loadspec.reference.layers.attention import AttentionLayerBase
from loadspec.reference.lifecycle import is_attention, process_module
from loadspec.reference.loaders import WeightLoader, default_weight_loader
from loadspec.reference.mapper import ShardId, WeightsMapper
from loadspec.reference.vocabulary import CPU_MIRRORS, FLOAT_MIRRORS, SCALE_NAMES

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
    """One layerwise reload of ``model`` [RELOAD-1..12]; use as a context manager or call ``finish``.

    ``transactional=False`` (default) streams as vLLM does; ``transactional=True`` stages every
    ``load`` and writes at ``finish`` only after the whole input validated, restoring the model
    exactly if anything fails (see the module docstring for both modes and their memory cost).
    """

    layer_class = LayerLoad

    def __init__(self, model: torch.nn.Module, *, mapper: WeightsMapper | None = None,
                 transactional: bool = False) -> None:
        fmt = getattr(model, FORMAT_ATTR, None)
        if fmt is None:
            raise LoadspecError("the model was not recorded: call record_model_format(model) after building it")
        self.model = model
        self.mapper: WeightsMapper | None = getattr(model, "mapper", None) if mapper is None else mapper
        self.format: ModelFormat = fmt
        self.transactional = transactional
        self.report = ReloadReport()
        # live: the order so far [ORDER-1, ORDER-4]; Module.__setattr__ is typed for tensors and modules only
        model.loadspec_order = self.report.processed  # type: ignore[assignment]
        self._modules = dict(model.named_modules())
        self.layers: dict[str, LayerLoad] = {}
        self._processed_owner: dict[int, str] = {}
        self._meta_owner: dict[int, tuple[LayerLoad, str]] = {}
        self._staged: list[PlannedLoad] = []
        self.staged_bytes = 0
        """Bytes of the input tensors a transactional session holds until ``finish``."""
        self.backup_bytes = 0
        """Bytes of the kernel tensors a transactional ``finish`` copied before writing."""
        self._finished = False
        self._begun = False
        self._begin()
        self._begun = True

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
                self._meta_owner[id(meta)] = (layer, name)
        self._place_aliases()

    def _place_aliases(self) -> None:
        for (module_name, name), (owner, owner_name) in self.format.aliases.items():
            _set_param(self._modules[module_name], name, self._modules[owner]._parameters[owner_name])

    def _counting_loader(self, layer: LayerLoad, name: str, template: TensorTemplate) -> WeightLoader:
        original = template.loader
        # The loader rides on a parameter registered in the model: a strong reference to the session would keep
        # an abandoned session alive as long as the model, and its meta tensors with it [RELOAD-12].
        session_ref = weakref.ref(self)

        def counting_loader(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None:
            session = session_ref()
            if session is None:
                raise LoadspecError(f"{layer.name}.{name}: the reload session that registered it is gone")
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
            if not session.defers(layer.module) and layer.counted() >= layer.total:
                session._process_layer(layer)  # the last element arrived [ORDER-4]

        return counting_loader

    def defers(self, module: torch.nn.Module) -> bool:
        """Whether ``module`` waits for ``finish`` instead of being processed when complete [ORDER-1]."""
        return is_attention(module)

    # ---------------------------------------------------------------- load
    def load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Deliver weights; may be called any number of times [RELOAD-10]. A rejected call writes nothing [LOAD-6].

        Streaming: the call's weights are written (and completed layers processed) before it returns.
        Transactional: they are only validated and staged; ``finish`` writes them.
        """
        if self._finished:
            raise LoadspecError("this reload session is finished")
        planned = AutoWeightsLoader(self.model).plan(weights, mapper=self.mapper, guard=self._reject_processed)
        if self.transactional:
            self._staged.extend(planned)
            self.staged_bytes += sum(load.tensor.numel() * load.tensor.element_size() for load in planned)
        else:
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
        """Process deferred attention, restore untouched layers, reject partial ones [RELOAD-3..6, ORDER-1].

        Transactional: first check the staged input as a whole (partial layers), back up, then write;
        any failure restores the model exactly [RELOAD-11].
        """
        if self._finished:
            return self.report
        if self.transactional:
            return self._finish_transactional()
        return self._finish_streaming()

    def _finish_streaming(self) -> ReloadReport:
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

    # ------------------------------------------------------ transactional
    def _dry_count(self, staged: list[PlannedLoad]) -> list[str]:
        """What every staged non-attention layer would lack, counted against the meta templates (no write)."""
        regions: dict[str, dict[str, dict[RegionKey, int]]] = {}
        for load in staged:
            owner = self._meta_owner.get(id(load.param))
            if owner is None:
                continue  # not a reloadable template (cannot happen for a planned load; nothing to count)
            layer, name = owner
            args = (load.param, load.tensor) if load.shard_id is None else (load.param, load.tensor, load.shard_id)
            counter = CopyCounter()
            with counter:
                layer.templates[name].loader(*args)  # against the meta template: counts, writes nothing
            regions.setdefault(layer.name, {}).setdefault(name, {}).update(counter.per_destination)
        missing: list[str] = []
        for layer_name, got in regions.items():
            layer = self.layers[layer_name]
            if is_attention(layer.module):
                continue
            for name, template in layer.templates.items():
                counted = min(sum(got.get(name, {}).values()), template.numel)
                if counted < template.numel:
                    missing.append(f"{layer_name}.{name} ({counted} of {template.numel} elements)")
        return missing

    def _backup(self, staged: list[PlannedLoad]
                ) -> list[tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, object]]]:
        """Copies of every kernel tensor and host mirror the staged reload can write."""
        touched = {owner[0].name for load in staged if (owner := self._meta_owner.get(id(load.param)))}
        saved: list[tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, object]]] = []
        for layer in self.layers.values():
            if layer.name not in touched and not is_attention(layer.module):
                continue
            module = layer.module
            tensors = {name: tensor.detach().clone() for name, tensor in
                       [*layer.kernel.items(), *((n, b) for n, b in module._buffers.items() if b is not None)]}
            mirrors: dict[str, object] = {}
            for attribute in (*FLOAT_MIRRORS.values(), *CPU_MIRRORS.values()):
                if hasattr(module, attribute):
                    value = getattr(module, attribute)
                    mirrors[attribute] = (value, value.clone()) if isinstance(value, torch.Tensor) else value
            self.backup_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
            saved.append((module, tensors, mirrors))
        return saved

    @torch.no_grad()
    def _rollback(self, saved: list[tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, object]]]) -> None:
        """Re-register every kernel tensor and write the backed-up values and mirrors back into them."""
        self._put_back_registrations()
        layers = {id(layer.module): layer for layer in self.layers.values()}
        for module, tensors, mirrors in saved:
            layer = layers[id(module)]
            for name, value in tensors.items():
                target: torch.Tensor | None = layer.kernel.get(name)
                if target is None:
                    target = module._buffers[name]
                if target is not None:
                    target.data.copy_(value)
            for attribute, mirror in mirrors.items():
                if isinstance(mirror, tuple):
                    original, copy = cast(tuple[torch.Tensor, torch.Tensor], mirror)
                    original.copy_(copy)
                    setattr(module, attribute, original)
                else:
                    setattr(module, attribute, mirror)

    @staticmethod
    def _check_across_calls(staged: list[PlannedLoad]) -> None:
        """Reject two sources for one parameter delivered in different ``load`` calls [LOAD-14]."""
        given: dict[int, list[PlannedLoad]] = {}
        for load in staged:
            for other in given.get(id(load.param), ()):
                if other.shard_id is None or load.shard_id is None or other.shard_id == load.shard_id:
                    raise DuplicateSourceError(
                        f"{other.source!r} and {load.source!r} (in another load call) both give "
                        f"{load.name!r}" + (f" shard {load.shard_id!r}" if load.shard_id is not None else "")
                        + "; a reload must give each value once [LOAD-14]")
            given.setdefault(id(load.param), []).append(load)

    def _finish_transactional(self) -> ReloadReport:
        staged, self._staged = self._staged, []
        try:
            self._check_across_calls(staged)
            missing = self._dry_count(staged)
            if missing:
                raise PartialLayerError(
                    "reload delivered only part of these weights (nothing was written: the model keeps its "
                    f"previous values) [RELOAD-6, RELOAD-11]: {'; '.join(missing)}")
            saved = self._backup(staged)
        except BaseException:
            self.abort()
            raise
        try:
            write_planned(staged)
            return self._finish_streaming()
        except BaseException:
            self._finished = True
            self._rollback(saved)
            raise

    def _put_back(self, layer: LayerLoad) -> None:
        """Drop the scale parameters left on an attention layer; register any other layer's kernel tensors again."""
        if is_attention(layer.module):
            for name in SCALE_NAMES:
                if name in layer.module._parameters:
                    delattr(layer.module, name)
        else:
            self._restore_kernel(layer)

    def _put_back_registrations(self) -> None:
        """Register every layer's kernel tensors again and drop any scale parameter left on attention."""
        for layer in self.layers.values():
            self._put_back(layer)
        self._place_aliases()

    def abort(self) -> None:
        """Put every unprocessed layer back as it was; nothing delivered since is applied [RELOAD-12].

        Streaming: layers already processed keep their new values (vLLM's semantics). Transactional:
        nothing was written before ``finish``, so the model is exactly as before.
        """
        if self._finished:
            return
        self._finished = True
        self._staged = []
        for layer in self.layers.values():
            if not layer.processed:
                self._put_back(layer)
        self._place_aliases()

    def __del__(self) -> None:
        # An abandoned session (neither finished nor aborted) must not leave meta tensors in the model [RELOAD-12].
        if getattr(self, "_begun", False) and not getattr(self, "_finished", True):
            self.abort()

    def __enter__(self) -> ReloadSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


def reload_weights(model: torch.nn.Module, weights: Iterable[tuple[str, torch.Tensor]], *,
                   mapper: WeightsMapper | None = None, transactional: bool = True) -> ReloadReport:
    """Reload ``weights`` into a processed model layer by layer [RELOAD-1..12].

    Transactional by default: the whole input is validated (shapes, dtypes, scale values, duplicate
    sources, partial layers) before the first write, and any failure leaves the model bit-identical
    [RELOAD-11]. ``transactional=False`` streams as vLLM does.
    """
    session = ReloadSession(model, mapper=mapper, transactional=transactional)
    try:
        session.load(weights)
    except BaseException:
        session.abort()
        raise
    return session.finish()
