"""The reference loader's entry points: build, first load, dummy load, reload, export.

Re-exported by ``loadspec.reference``; the reference adapter
(``loadspec.conformance.adapters.reference``) calls nothing else of the model tier.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from loadspec.reference.auto_loader import AutoWeightsLoader, PlannedLoad, write_planned
from loadspec.reference.checkpoint import iter_checkpoint
from loadspec.reference.errors import MissingWeightsError
from loadspec.reference.lifecycle import export_kernel_state, process_weights_after_loading
from loadspec.reference.mapper import ShardId
from loadspec.reference.model import ReferenceModel, build_model
from loadspec.reference.reload import ReloadReport, ReloadSession, record_model_format, reload_weights
from loadspec.reference.scales import is_scale_parameter
from loadspec.reference.spec import ModelSpec

Weights = Iterable[tuple[str, torch.Tensor]]


def build(spec: ModelSpec, *, device: torch.device | str | None = None) -> ReferenceModel:
    """Build the model of ``spec`` and record its checkpoint format for later reloads."""
    model = build_model(spec, device=device)
    record_model_format(model)
    return model


def weights_of(source: Weights | str | Path) -> Weights:
    """``source`` itself, or the tensors of the checkpoint directory it names."""
    return iter_checkpoint(source) if isinstance(source, (str, Path)) else source


def _covered_ids(planned: Iterable[PlannedLoad]) -> set[int]:
    """Identities of the parameters a plan fills completely (every shard of a fused parameter)."""
    shards: dict[int, set[ShardId]] = {}
    covered: set[int] = set()
    for load in planned:
        if load.shard_id is None:
            covered.add(id(load.param))
        else:
            got = shards.setdefault(id(load.param), set())
            got.add(load.shard_id)
            # A fused parameter's loader is a ShardLoader: an instance attribute torch's Parameter does not declare.
            if got >= set(load.param.weight_loader.shards):  # type: ignore[attr-defined]
                covered.add(id(load.param))
    return covered


def first_load(model: ReferenceModel, source: Weights | str | Path) -> set[str]:
    """Load a full checkpoint into a freshly built model, then process it [LOAD-3, LOAD-6, LOAD-7, ORDER-3].

    Every parameter except the optional KV-cache scales must get a value; nothing is
    written unless the whole checkpoint validates: shapes, dtypes [LOAD-11], linear and KV-cache
    scale values [LOAD-12, LOAD-13], duplicate sources [LOAD-14], output buffers [LOAD-15] and
    completeness (a partial layer is a missing parameter) are all checked before the first write.
    """
    planned = AutoWeightsLoader(model).plan(weights_of(source), mapper=model.mapper)
    covered = _covered_ids(planned)
    missing = [name for name, param in model.named_parameters()
               if not is_scale_parameter(param) and id(param) not in covered]
    if missing:
        raise MissingWeightsError(
            f"the checkpoint gives no value for {len(missing)} parameter(s) [LOAD-7]: {', '.join(missing)}")
    write_planned(planned)
    model.loadspec_order = process_weights_after_loading(model)
    return {load.name for load in planned}


@torch.no_grad()
def dummy_load(model: ReferenceModel, *, seed: int = 0) -> None:
    """Fill every parameter with small random values (KV-cache scales stay sentinels), then process."""
    generator = torch.Generator().manual_seed(seed)
    for _, param in model.named_parameters():
        if is_scale_parameter(param):
            continue
        values = torch.empty(param.shape, dtype=torch.float32).uniform_(-1e-2, 1e-2, generator=generator)
        if param.dtype == torch.float8_e4m3fn:
            values = values * 100  # spread over the e4m3 range
        if param.dim() <= 1 and param.dtype == torch.float32 and param.numel() <= 4096:
            values = values.abs() + 1e-3  # scales must be positive
        param.data.copy_(values.to(param.dtype))
    model.loadspec_order = process_weights_after_loading(model)


def reload(model: ReferenceModel, source: Weights | str | Path, *, transactional: bool = True) -> ReloadReport:
    """Reload weights into a processed model layer by layer [RELOAD-1..12].

    Transactional by default: the whole input is validated before the first write and every layer
    is committed or none [RELOAD-11]; the cost is one copy of the kernel tensors of the layers it
    processes (and of attention state), none for layout-preserving layers, whose writes are deferred to
    the end (the input is held in memory while it is validated either way). ``transactional=False``
    streams as vLLM does: a failure leaves the layers processed before it with their new values.
    """
    return reload_weights(model, weights_of(source), transactional=transactional)


def reload_session(model: ReferenceModel, *, transactional: bool = False) -> ReloadSession:
    """An open reload: ``load`` any number of times, then ``finish`` [RELOAD-10].

    Streaming by default (vLLM's semantics, bounded memory for bucketed updates); with
    ``transactional=True`` every bucket is staged and written at ``finish`` only if the whole reload
    validates [RELOAD-11]. Abandoning either kind restores the unwritten layers [RELOAD-12].
    """
    return ReloadSession(model, transactional=transactional)


def export(model: ReferenceModel) -> dict[str, torch.Tensor]:
    """The processed kernel state in canonical names (CPU copies)."""
    return export_kernel_state(model)
