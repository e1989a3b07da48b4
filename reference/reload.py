"""Layerwise reload: record -> begin -> load (any number of calls) -> finish.

``record_model_format`` runs at build time and keeps each layer's checkpoint-format
parameters as templates. ``ReloadSession`` counts every element that arrives against
them [COUNT-1..4] and buffers the loaded tensors. A layer is processed the moment its
last element arrives [ORDER-4]; attention layers wait for ``finish`` [ORDER-1]. A partial
layer is never written [RELOAD-6].

Where the cost goes, and why it is small:

* **Counting.** The loaders the reference owns (``default_weight_loader``, ``ShardLoader``, the KV-scale
  loader) know the region they write: the whole parameter, or ``shards[shard_id]`` rows of it; those
  regions are counted analytically. Only a loader the reference does not know runs once under the
  ``CopyCounter`` dispatch mode against a ``meta`` template [COUNT-1..6]. Attention layers are not
  counted (they are processed at ``finish`` whatever arrived) [ORDER-1].
* **Validation.** Each tensor is validated once, by ``AutoWeightsLoader.plan`` [LOAD-6]; an owned
  loader's write is then a plain ``copy_`` into its region (``non_blocking`` on a GPU: from pinned host
  memory the copy overlaps the host's work). The device is synchronized once per ``load`` call and at
  ``finish``, so the caller may reuse its buffers when ``load`` returns.
* **Layout-preserving layers** (their quant method or module says ``preserves_layout``, and every
  kernel tensor still has its template's class, shape and dtype) keep their kernel tensors registered
  for the whole session: the loads resolve to them, and the layer is written straight into them, each
  byte once [RELOAD-1]. Any other layer has its kernel tensors swapped for ``meta`` templates during
  the session; when complete it is materialized (views of one staging buffer, reused from layer to
  layer), processed, and copied into its kernel tensors, which stay the same objects [RELOAD-1]. On a
  GPU two staging buffers alternate: a layer's host-to-device copies run on a copy stream while the
  previous layer is processed, ordered by events (no host synchronization per layer).
* **Attention layers**: a parameter other than the KV-cache scales (e.g. attention sinks) is kept
  registered and written in place when delivered [RELOAD-15]; the scales are re-created and processed
  only if some scale was delivered [RELOAD-3, RELOAD-4].

Two modes:

* **streaming** (``ReloadSession(model)``, the default of a session: vLLM's semantics). Each
  ``load`` call is validated whole before it writes [LOAD-6], but a layer is processed and written
  as soon as its last element arrives, so a later rejection (a bad tensor in a later call, a partial
  layer or a bad scale found at ``finish``) leaves the layers processed before it with their new
  values. Memory: the current call's tensors, one layer's staging buffer and its processing.
* **transactional** (``ReloadSession(model, transactional=True)``; the default of the one-call
  ``reload_weights``/``api.reload``). ``load`` validates and stages; ``finish`` checks the whole
  input (partial layers included) before the first write, backs up every tensor and host mirror a
  failure could leave half-written, applies the staged loads with the streaming machinery (same
  processing order, same result), and restores the backup if anything fails, ``KeyboardInterrupt``
  included: every layer is committed or none [RELOAD-11]. Layout-preserving layers whose loaders the
  reference owns are not backed up: their writes (plain copies of validated tensors, which cannot
  fail) are deferred until everything else succeeded and run with ``SIGINT`` held back, so nothing
  can interrupt them half-way. Memory: the staged input tensors are kept alive until ``finish`` (a
  one-call reload holds them anyway while it validates), plus one copy of the backed-up kernel
  tensors (``ReloadSession.backup_bytes``: the processed layers and attention; zero for a bf16
  model's linears); see ``staged_bytes``.

In both modes ``abort()``, leaving a ``with`` block by an exception, or dropping an unfinished
session (garbage collection) puts back every layer that was not yet written, so no meta (data-less)
tensor stays registered [RELOAD-12].
"""

from __future__ import annotations

import signal
import threading
import weakref
from collections.abc import Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

import torch

from loadspec.reference.auto_loader import AutoWeightsLoader, PlannedLoad, write_planned
from loadspec.reference.copy_counter import CopyCounter
from loadspec.reference.errors import DuplicateSourceError, LoadspecError, PartialLayerError
from loadspec.reference.layers.attention import AttentionLayerBase
from loadspec.reference.layers.linear import ShardLoader
from loadspec.reference.lifecycle import is_attention, process_module
from loadspec.reference.loaders import WeightLoader, default_weight_loader
from loadspec.reference.mapper import ShardId, WeightsMapper
from loadspec.reference.registration import (
    has_parameter_or_attribute,
    module_attribute,
    put_parameter,
    registered_tensor,
)
from loadspec.reference.scales import KVCacheScaleParameter
from loadspec.reference.vocabulary import CPU_MIRRORS, FLOAT_MIRRORS, SCALE_NAMES

FORMAT_ATTR = "_loadspec_format"
STAGING_ALIGN = 256
"""Byte alignment of each template's view in a layer's staging buffer."""

_SHARD_CALL = ShardLoader.__call__
_SCALE_LOADER = KVCacheScaleParameter.weight_loader
_WHOLE = ("whole",)
_UNSET = object()


@dataclass(frozen=True)
class TensorTemplate:
    """Checkpoint-format metadata of one parameter: class, shape, dtype, attributes."""

    cls: type[torch.nn.Parameter]
    shape: tuple[int, ...]
    dtype: torch.dtype
    attrs: dict[str, Any]  # the tensor's instance attributes: loaders, names, whatever a layer set
    numel: int = field(init=False, compare=False)
    nbytes: int = field(init=False, compare=False)
    loader: WeightLoader = field(init=False, compare=False)
    """The parameter's own ``weight_loader``, else its class's, else the default [SCALE-7]."""
    owned: bool = field(init=False, compare=False)
    """Whether ``loader`` is one of the reference's own (``is_owned_loader``)."""

    def __post_init__(self) -> None:
        numel = int(torch.Size(self.shape).numel())
        loader = self.attrs.get("weight_loader") or getattr(self.cls, "weight_loader", default_weight_loader)
        object.__setattr__(self, "numel", numel)  # frozen: each set once, here
        object.__setattr__(self, "nbytes", numel * self.dtype.itemsize)
        object.__setattr__(self, "loader", loader)
        object.__setattr__(self, "owned", is_owned_loader(loader))

    @classmethod
    def of(cls, tensor: torch.nn.Parameter) -> TensorTemplate:
        return cls(type(tensor), tuple(tensor.shape), tensor.dtype, dict(tensor.__dict__))

    def materialize(self, device: torch.device | str, data: torch.Tensor | None = None) -> torch.nn.Parameter:
        """A parameter of this class, shape, dtype and attributes on ``device`` (``meta`` for counting), over
        ``data`` when given (a view of a staging buffer)."""
        if data is None:
            data = torch.empty(self.shape, dtype=self.dtype, device=device)
        param = torch.nn.Parameter(data, requires_grad=False)
        param.__class__ = self.cls
        param.__dict__.update(self.attrs)
        return param


def is_owned_loader(loader: object) -> bool:
    """Whether ``loader`` is one of the reference's own loaders, whose written region is known [COUNT-1]."""
    return loader is default_weight_loader or loader is _SCALE_LOADER or (
        isinstance(loader, ShardLoader) and type(loader).__call__ is _SHARD_CALL)


def owned_region(template: TensorTemplate, shard_id: ShardId | None) -> tuple[Hashable, int] | None:
    """The region ``template``'s owned loader writes for a validated load, as ``(key, elements)``; ``None`` for a
    loader the reference does not own (count it with ``CopyCounter``) [COUNT-1, COUNT-3]."""
    if not template.owned:
        return None
    loader = template.loader
    if shard_id is None or not isinstance(loader, ShardLoader):
        return _WHOLE, template.numel
    offset, size = loader.shards[shard_id]
    row = template.numel // template.shape[0] if template.shape and template.shape[0] else 0
    return ("rows", offset, size), size * row


def write_owned(loader: object, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None) -> bool:
    """Write a validated load of an owned loader with one ``copy_`` (``non_blocking`` on a GPU); ``False`` for a
    loader the reference does not own (call it instead)."""
    if not is_owned_loader(loader):
        return False
    destination = param.data
    if shard_id is not None and isinstance(loader, ShardLoader):
        offset, size = loader.shards[shard_id]
        destination = destination.narrow(0, offset, size)
    source = loaded_weight if loaded_weight.shape == destination.shape else loaded_weight.reshape(destination.shape)
    destination.copy_(source, non_blocking=destination.device.type == "cuda")
    return True


@dataclass
class ModelFormat:
    """Recorded checkpoint format: per layer, its parameters' templates; tied aliases."""

    layers: dict[str, dict[str, TensorTemplate]]
    aliases: dict[tuple[str, str], tuple[str, str]]
    metas: dict[tuple[str, str], torch.nn.Parameter] = field(default_factory=dict, compare=False, repr=False)
    """``(layer, name)`` -> the data-less ``meta`` template of a parameter, made once per model: a session registers
    it in place of a swapped parameter, with its own counting ``weight_loader`` (sessions run one at a time), and
    counts a foreign loader's writes against it [COUNT-1]."""


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
    """One layer's state during a reload.

    ``kernel``: the tensors the engine runs with (parameters, or plain tensor attributes named in
    ``plain``); ``swapped``: the names whose kernel tensor is replaced by a ``meta`` template during the
    session (none for a layout-preserving layer, whose kernel tensors stay registered: ``direct``).
    """

    name: str
    module: torch.nn.Module
    templates: dict[str, TensorTemplate]
    kernel: dict[str, torch.Tensor]
    loads: list[tuple[str, torch.Tensor, ShardId | None]] = field(default_factory=list)
    regions: dict[str, dict[Hashable, int]] = field(default_factory=dict)
    processed: bool = False
    direct: bool = False
    deferrable: bool = False  # direct, every loader the reference's own, read by no attention layer
    plain: set[str] = field(default_factory=set)
    swapped: set[str] = field(default_factory=set)
    _total: int = field(default=0, init=False, repr=False)
    _counted: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _counted_sum: int = field(default=0, init=False, repr=False)  # counted(), kept as regions arrive

    def __post_init__(self) -> None:
        self._total = sum(t.numel for t in self.templates.values())

    @property
    def total(self) -> int:
        return self._total

    def add_region(self, param_name: str, key: Hashable, elements: int) -> None:
        """Count ``elements`` for one destination region of ``param_name``; a region written again adds nothing."""
        regions = self.regions.setdefault(param_name, {})
        before = self._counted.get(param_name, 0)
        after = self._counted[param_name] = before + elements - regions.get(key, 0)
        regions[key] = elements
        cap = self.templates[param_name].numel
        self._counted_sum += min(after, cap) - min(before, cap)

    def counted(self, param_name: str | None = None) -> int:
        """Elements counted so far, each region once and capped per parameter [COUNT-3]."""
        if param_name is not None:
            return min(self._counted.get(param_name, 0), self.templates[param_name].numel)
        return self._counted_sum

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
    if has_parameter_or_attribute(module, name):
        delattr(module, name)
    if value is not None:
        put_parameter(module, name, value)


def _registered(module: torch.nn.Module, name: str) -> torch.Tensor | None:
    """``module``'s parameter ``name``, or a plain tensor attribute of that name (processing may leave one)."""
    param = module._parameters.get(name)
    if param is not None:
        return param
    value = module.__dict__.get(name)
    return value if isinstance(value, torch.Tensor) else None


def _keeps_layout(module: torch.nn.Module, templates: Mapping[str, TensorTemplate],
                  kernel: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``module`` can be written straight into its kernel tensors: its quant method (or the module) says
    processing keeps the layout, and every kernel tensor still has its template's class, shape and dtype (a
    recorded loader may need the class processing replaced)."""
    keeps = getattr(module_attribute(module, "quant_method"), "preserves_layout", _UNSET)
    if keeps is _UNSET:  # the module's own only when its quant method does not say
        keeps = module_attribute(module, "preserves_layout", False)
    if not keeps:
        return False
    return all(_matches(t, kernel.get(name)) for name, t in templates.items())


def _matches(template: TensorTemplate, tensor: torch.Tensor | None) -> bool:
    return tensor is not None and type(tensor) is template.cls and tuple(tensor.shape) == template.shape \
        and tensor.dtype == template.dtype and (
            template.owned or getattr(tensor, "weight_loader", None) is template.loader)


@contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold ``SIGINT`` back for the block (main thread only) and raise ``KeyboardInterrupt`` after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


class ReloadSession:
    """One layerwise reload of ``model`` [RELOAD-1..12, RELOAD-15..17]; a context manager, or call ``finish``.

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
        self._owner: dict[int, tuple[LayerLoad, str]] = {}
        self._staged: list[PlannedLoad] = []
        self._staging: list[torch.Tensor | None] = [None, None]
        self._staging_free: list[torch.cuda.Event | None] = [None, None]
        self._slot = 0
        self._copy_stream: torch.cuda.Stream | None = None
        self._start: torch.cuda.Event | None = None  # recorded on the current stream when the session begins
        self._deferred: list[LayerLoad] | None = None
        self._cuda = False
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
        attention = {name for name in self.format.layers if is_attention(self._modules[name])}
        read_by_attention = {id(read) for name in attention for read in self._modules[name].reads()}
        for layer_name, templates in self.format.layers.items():
            module = self._modules[layer_name]
            kernel: dict[str, torch.Tensor] = {name: p for name, p in module._parameters.items() if p is not None}
            plain: set[str] = set()
            for name in templates:
                value = _registered(module, name)
                if name not in kernel and value is not None:  # processing left a plain tensor attribute
                    kernel[name] = value
                    plain.add(name)
            layer = self.layer_class(layer_name, module, templates, kernel, plain=plain)
            self.layers[layer_name] = layer
            self._cuda = self._cuda or any(t.is_cuda for t in kernel.values())
            if layer_name in attention:
                # KV-cache scales exist only as templates; any other parameter (sinks) stays registered when
                # its layout is kept [RELOAD-15]
                layer.swapped = {n for n in kernel if n in SCALE_NAMES or (
                    n in templates and not _matches(templates[n], kernel[n]))}
                meta_names = [n for n in templates if n in SCALE_NAMES or n in layer.swapped]
            elif _keeps_layout(module, templates, kernel):
                layer.direct = True
                layer.deferrable = id(module) not in read_by_attention and all(t.owned for t in templates.values())
                meta_names = []
            else:
                layer.swapped = set(kernel)
                meta_names = list(templates)
            for name in layer.swapped:
                delattr(module, name)
            for name in meta_names:
                meta = self.format.metas.get((layer_name, name))
                if meta is None:
                    meta = self.format.metas[(layer_name, name)] = templates[name].materialize("meta")
                # vLLM's convention: the loader is an attribute of the parameter, which torch's type does not declare
                meta.weight_loader = self._counting_loader(layer, name)  # type: ignore[attr-defined]
                put_parameter(module, name, meta)
                self._owner[id(meta)] = (layer, name)
            for name in templates:
                if name not in meta_names and name in kernel:
                    self._owner[id(kernel[name])] = (layer, name)
        self._place_aliases()
        if self._cuda:
            self._start = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self._start.record(torch.cuda.current_stream())

    def _place_aliases(self) -> None:
        for (module_name, name), (owner, owner_name) in self.format.aliases.items():
            target = self._modules[owner]._parameters[owner_name]
            if self._modules[module_name]._parameters.get(name) is not target:
                _set_param(self._modules[module_name], name, target)

    def _counting_loader(self, layer: LayerLoad, name: str) -> WeightLoader:
        # The loader rides on a meta template the model's format keeps: a strong reference to the session (or to
        # its LayerLoad, which holds the delivered tensors) would keep an abandoned session's state alive as long
        # as the model [RELOAD-12].
        session_ref, layer_name = weakref.ref(self), layer.name

        def counting_loader(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: ShardId | None = None) -> None:
            session = session_ref()
            if session is None:
                raise LoadspecError(f"{layer_name}.{name}: the reload session that registered it is gone")
            session._deliver(session.layers[layer_name], name, loaded_weight, shard_id)

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
            self._deliver_all(planned)
        loaded = {load.name for load in planned}
        self.report.loaded |= loaded
        return loaded

    def _deliver_all(self, planned: list[PlannedLoad]) -> None:
        """Deliver validated loads to their layers (a tensor no layer owns, a buffer, is written at once)."""
        with torch.no_grad():
            for load in planned:
                owner = self._owner.get(id(load.param))
                if owner is None:
                    write_planned([load])
                else:
                    self._deliver(owner[0], owner[1], load.tensor, load.shard_id)
        if self._deferred is None:  # a transactional finish synchronizes once, after its deferred writes
            self._sync()

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    def _deliver(self, layer: LayerLoad, name: str, loaded_weight: torch.Tensor, shard_id: ShardId | None) -> None:
        """Count one validated load against its template and buffer it; process the layer once complete."""
        if layer.processed:
            raise LoadspecError(
                f"{layer.name}.{name}: delivered after layer {layer.name!r} was already processed "
                f"in this reload [RELOAD-9]")
        template = layer.templates[name]
        region = owned_region(template, shard_id)
        if region is not None:
            layer.add_region(name, *region)
        elif not is_attention(layer.module):  # attention layers are not counted [ORDER-1]
            for key, elements in self._count_foreign(layer, name, loaded_weight, shard_id).items():
                layer.add_region(name, key, elements)
        layer.loads.append((name, loaded_weight, shard_id))
        if not self.defers(layer.module) and layer.counted() >= layer.total:
            self._process_layer(layer)  # the last element arrived [ORDER-4]

    def _count_foreign(self, layer: LayerLoad, name: str, loaded_weight: torch.Tensor,
                       shard_id: ShardId | None) -> dict[Hashable, int]:
        """Run a loader the reference does not own against a meta template under ``CopyCounter`` [COUNT-1..6]."""
        meta = self.format.metas.get((layer.name, name))
        if meta is None:
            meta = self.format.metas[(layer.name, name)] = layer.templates[name].materialize("meta")
        args = (meta, loaded_weight) if shard_id is None else (meta, loaded_weight, shard_id)
        counter = CopyCounter()
        with counter:
            layer.templates[name].loader(*args)  # against the meta template: counts, writes no data
        counted: dict[Hashable, int] = {key: elements for key, elements in counter.per_destination.items()}
        return counted

    def _reject_processed(self, source: str, name: str, param: torch.Tensor) -> None:
        layer = self._processed_owner.get(id(param))
        if layer is not None:
            raise LoadspecError(f"checkpoint weight {source!r} (-> {name!r}): delivered after layer {layer!r} "
                                f"was already processed in this reload [RELOAD-9]")

    # ------------------------------------------------------------- process
    def _replay(self, layer: LayerLoad, targets: Mapping[str, torch.Tensor],
                loads: Iterable[tuple[str, torch.Tensor, ShardId | None]] | None = None) -> None:
        for name, loaded_weight, shard_id in layer.loads if loads is None else loads:
            original = layer.templates[name].loader
            if write_owned(original, targets[name], loaded_weight, shard_id):
                continue  # validated once, by the plan [LOAD-6]
            args = (targets[name], loaded_weight) if shard_id is None else (targets[name], loaded_weight, shard_id)
            original(*args)

    def _restore_kernel(self, layer: LayerLoad, *, scales: bool = True) -> None:
        """Drop the templates (and what processing registered) and register the swapped kernel tensors again;
        ``scales=False`` leaves out an attention layer's scale parameters (processing consumed them)."""
        if layer.direct:
            return  # its kernel tensors never left
        module = layer.module
        attention = is_attention(module)
        names = [n for n in module._parameters if not attention or n in layer.swapped or n in SCALE_NAMES]
        names += [n for n in layer.plain if n in module.__dict__]
        for name in names:
            delattr(module, name)
        for name, tensor in layer.kernel.items():
            if name not in layer.swapped or (attention and not scales and name in SCALE_NAMES):
                continue
            if name in layer.plain:
                setattr(module, name, tensor)
            else:
                put_parameter(module, name, cast(torch.nn.Parameter, tensor))

    def _materialize(self, layer: LayerLoad, slot: int) -> tuple[dict[str, torch.nn.Parameter], bool]:
        """The layer's templates as parameters over views of staging buffer ``slot``, reused from layer to layer;
        and whether the buffer is new (two buffers alternate on a GPU, one serves on CPU)."""
        device = next(iter(layer.kernel.values())).device
        offsets: dict[str, int] = {}
        size = 0
        for name, template in layer.templates.items():
            offsets[name] = size
            size += -(-template.nbytes // STAGING_ALIGN) * STAGING_ALIGN
        staging = self._staging[slot]
        new = staging is None or staging.numel() < size or staging.device != device
        if new:
            self._staging[slot] = staging = None  # free the old one first
            staging = self._staging[slot] = torch.empty(max(size, 1), dtype=torch.uint8, device=device)
        assert staging is not None
        return {name: t.materialize(device, staging[offsets[name]:offsets[name] + t.nbytes].view(t.dtype)
                                    .view(t.shape))
                for name, t in layer.templates.items()}, new

    def _stage(self, layer: LayerLoad) -> tuple[dict[str, torch.nn.Parameter], int]:
        """Materialize ``layer`` and replay its loads into the staging views; return them and the slot used.

        On a GPU the host-to-device copies run on a copy stream into one of two staging buffers, and the
        processing (on the current stream) waits for them with an event, not a host synchronization: the
        next layer's copies overlap this layer's processing. A buffer is reused once the processing that
        read it two layers ago is done.
        """
        cuda = next(iter(layer.kernel.values())).device.type == "cuda"
        if cuda and any(t.device.type == "cuda" for _, t, _ in layer.loads):
            cuda = False  # sources already on the device: nothing to overlap, copy on the current stream
        slot = self._slot
        self._slot = 1 - slot if cuda else 0
        fresh, new = self._materialize(layer, slot)
        if not cuda:
            self._replay(layer, fresh)
            return fresh, slot
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # unannotated in torch
        compute, copy = torch.cuda.current_stream(), self._copy_stream
        free = self._staging_free[slot]
        if new:
            copy.wait_stream(compute)  # memory the current stream may have used before
            staging = self._staging[slot]
            assert staging is not None
            staging.record_stream(copy)  # not reused by the allocator before the copy stream is done with it
        elif free is not None:
            copy.wait_event(free)
        with torch.cuda.stream(copy):
            self._replay(layer, fresh)
        loaded = torch.cuda.Event()  # type: ignore[no-untyped-call]
        loaded.record(copy)
        compute.wait_event(loaded)
        return fresh, slot

    def _process_layer(self, layer: LayerLoad) -> None:
        if torch.is_grad_enabled():  # a counting loader called outside the session's own delivery
            with torch.no_grad():
                return self._process_layer(layer)
        module = layer.module
        if layer.direct:
            if self._deferred is not None and layer.deferrable:
                self._deferred.append(layer)  # written last, SIGINT held back [RELOAD-11]
            else:
                self._replay(layer, layer.kernel)  # each byte written once
        else:
            fresh, slot = self._stage(layer)
            for name, param in fresh.items():
                _set_param(module, name, param)
            process_module(module)
            self._write_back(layer)
            if self._copy_stream is not None:
                done = torch.cuda.Event()  # type: ignore[no-untyped-call]
                done.record(torch.cuda.current_stream())
                self._staging_free[slot] = done
            self._restore_kernel(layer)
            self._place_aliases()
        layer.processed = True
        self._processed_owner.update({id(t): layer.name for t in layer.kernel.values()})
        self.report.processed.append(layer.name)
        if self._deferred is None or not layer.deferrable:
            layer.loads = []  # written: let the input go

    def _write_back(self, layer: LayerLoad) -> None:
        """Copy a processed layer's tensors into its kernel tensors, which stay the same objects [RELOAD-1]."""
        for name, kernel in layer.kernel.items():
            processed = _registered(layer.module, name)
            if processed is None:
                raise LoadspecError(f"{layer.name}.{name}: processing left the parameter unset (None)")
            if processed.shape != kernel.shape or processed.dtype != kernel.dtype:
                raise LoadspecError(
                    f"{layer.name}.{name}: processing produced {tuple(processed.shape)} {processed.dtype}, "
                    f"but the kernel tensor is {tuple(kernel.shape)} {kernel.dtype}")
            kernel.data.copy_(processed.data)

    def _finish_attention(self, layer: LayerLoad) -> None:
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self._finish_attention(layer)
        module = cast(AttentionLayerBase, layer.module)  # finish calls this for attention layers only
        scale_loads = [load for load in layer.loads if load[0] in SCALE_NAMES]
        other_loads = [load for load in layer.loads if load[0] not in SCALE_NAMES]
        for name in SCALE_NAMES:
            if name in module._parameters:
                delattr(module, name)
        if other_loads:  # sinks and the like: straight into the kernel tensors [RELOAD-15]
            swapped = {n for n, _, _ in other_loads if n in layer.swapped}
            fresh = {n: layer.templates[n].materialize(layer.kernel[n].device) for n in swapped}
            self._replay(layer, {**layer.kernel, **fresh}, other_loads)
            for name, tensor in fresh.items():
                kernel = layer.kernel[name]
                if kernel.shape != tensor.shape or kernel.dtype != tensor.dtype:
                    raise LoadspecError(
                        f"{layer.name}.{name}: the checkpoint format is {tuple(tensor.shape)} {tensor.dtype}, "
                        f"but the kernel tensor is {tuple(kernel.shape)} {kernel.dtype}")
                kernel.data.copy_(tensor.data)
        if scale_loads and module.quant_method is not None:
            # Fresh sentinels [RELOAD-3], on the host: they live only until processing resolves them into the
            # device buffers, and resolving host tensors needs no device synchronization (on a GPU a
            # synchronization here would wait for every layer processed before).
            module.quant_method.create_weights(module, device="cpu")
            for name in SCALE_NAMES:
                registered_tensor(module, name).loadspec_name = f"{layer.name}.{name}"  # type: ignore[attr-defined]
            self._replay(layer, {name: registered_tensor(module, name) for name in SCALE_NAMES}, scale_loads)
            try:
                module.quant_method.process_weights_after_loading(module)
            finally:
                for name in SCALE_NAMES:
                    if name in module._parameters:
                        delattr(module, name)
        module.process_weights_after_loading()
        self._restore_kernel(layer, scales=False)
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
        with torch.no_grad():
            for layer in self.layers.values():
                if is_attention(layer.module) and not layer.processed:
                    try:
                        self._finish_attention(layer)
                    except LoadspecError as exc:
                        failures.append(exc)
                    if not layer.loads:
                        self.report.untouched.append(layer.name)
        if self._deferred is None:
            self._sync()
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
        """What every staged non-attention layer would lack, counted as the delivery will count it (no write)."""
        regions: dict[str, dict[str, dict[Hashable, int]]] = {}
        for load in staged:
            owner = self._owner.get(id(load.param))
            if owner is None or is_attention(owner[0].module):
                continue  # a buffer, or an attention layer (not counted)
            layer, name = owner
            template = layer.templates[name]
            region = owned_region(template, load.shard_id)
            got = regions.setdefault(layer.name, {}).setdefault(name, {})
            if region is not None:
                got[region[0]] = region[1]
            else:
                got.update(self._count_foreign(layer, name, load.tensor, load.shard_id))
        missing: list[str] = []
        for layer_name, got_layer in regions.items():
            layer = self.layers[layer_name]
            for name, template in layer.templates.items():
                counted = min(sum(got_layer.get(name, {}).values()), template.numel)
                if counted < template.numel:
                    missing.append(f"{layer_name}.{name} ({counted} of {template.numel} elements)")
        return missing

    def _backup(self, staged: list[PlannedLoad]
                ) -> list[tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, object]]]:
        """Copies of every kernel tensor and host mirror the staged reload can write and a failure could leave
        half-written (not the layout-preserving layers whose writes are deferred)."""
        touched = {owner[0].name for load in staged if (owner := self._owner.get(id(load.param)))}
        saved: list[tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, object]]] = []
        for layer in self.layers.values():
            if (layer.name not in touched or layer.deferrable) and not is_attention(layer.module):
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
        self._sync()

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
        deferred: list[LayerLoad] = []
        self._deferred = deferred
        try:
            self._deliver_all(staged)
            report = self._finish_streaming()
        except BaseException:
            self._finished = True
            self._rollback(saved)
            raise
        finally:
            self._deferred = None
        with _sigint_held(), torch.no_grad():  # plain copies of validated tensors: nothing can fail half-way
            with self._commit_stream(deferred):
                for layer in deferred:
                    self._replay(layer, layer.kernel)
                    layer.loads = []
            self._sync()
        return report

    @contextmanager
    def _commit_stream(self, deferred: list[LayerLoad]) -> Iterator[None]:
        """On a GPU, the copy stream for the deferred writes: they read only the input and write only kernel
        tensors no processing reads, so they overlap the processing still running (after the work queued
        before the session began, or everything queued so far when an input tensor is on the device)."""
        stream = self._copy_stream
        if stream is None or self._start is None:
            yield
            return
        if any(t.device.type == "cuda" for layer in deferred for _, t, _ in layer.loads):
            stream.wait_stream(torch.cuda.current_stream())
        else:
            stream.wait_event(self._start)
        with torch.cuda.stream(stream):
            yield

    def _put_back(self, layer: LayerLoad) -> None:
        """Register every layer's kernel tensors again and drop the templates (an attention layer's scales)."""
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
    """Reload ``weights`` into a processed model layer by layer [RELOAD-1..12, RELOAD-15..17].

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
