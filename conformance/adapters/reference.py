"""The reference adapter: ``loadspec.reference`` behind the adapter protocol.

It is the suite's oracle and a complete example of an adapter.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import cast

import torch

from loadspec.conformance.adapter import CAPABILITIES, Weights
from loadspec.conformance.adapters import glue
from loadspec.reference import api
from loadspec.reference.auto_loader import AutoWeightsLoader
from loadspec.reference.cache_scale_mappers import cache_scale_mapper
from loadspec.reference.copy_counter import CopyCounter, credited_elements
from loadspec.reference.kv_cache import KVCacheMethod, tp_head_scales
from loadspec.reference.layers.attention import Attention, AttentionLayerBase
from loadspec.reference.loaders import default_weight_loader
from loadspec.reference.mapper import WeightsMapper
from loadspec.reference.quant_config import QuantConfig
from loadspec.reference.scales import KVCacheScaleParameter
from loadspec.reference.spec import ModelSpec


def loadspec_version() -> str:
    """The installed distribution's version, or the checkout's ``pyproject.toml`` version (``+source``)."""
    try:
        return version("loadspec")
    except PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        found = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.M) if pyproject.exists() else None
        return f"{found.group(1)}+source" if found else "unknown"


class ReferenceAdapter:
    """``loadspec.reference`` as an implementation under test."""

    name = "reference"
    report_id = "reference"
    capabilities = frozenset(CAPABILITIES)
    notes = "the reference implementation: the contract in code"

    def __init__(self) -> None:
        self.version = loadspec_version()
        if not torch.cuda.is_available():  # keeps whatever a subclass declares, minus cuda
            self.capabilities = frozenset(type(self).capabilities) - {"cuda"}

    # ------------------------------------------------------------ primitives
    def new_scale_parameter(self, *, device: str) -> torch.Tensor:
        return KVCacheScaleParameter(device=device)

    def load_scale(self, param: torch.Tensor, weight: torch.Tensor) -> None:
        param.weight_loader(param, weight)  # type: ignore[attr-defined]  # the scale parameter's own loader [SCALE-7]

    def make_attention(self, *, kv_cache_dtype: str, device: str) -> Attention:
        return Attention(num_heads=2, num_kv_heads=1, head_dim=4, kv_cache_dtype=kv_cache_dtype,
                         quant_config=QuantConfig("fp8"), device=device)

    def attention_scale_parameters(self, layer: Attention) -> dict[str, torch.Tensor]:
        return glue.scale_parameters(layer)

    # make_attention's quant config always gives the layer a KV-cache method.
    def create_scale_weights(self, layer: Attention) -> None:
        cast(KVCacheMethod, layer.quant_method).create_weights(layer, device=layer._k_scale.device)

    def process_attention(self, layer: Attention) -> None:
        cast(KVCacheMethod, layer.quant_method).process_weights_after_loading(layer)

    def attention_outputs(self, layer: Attention) -> dict[str, torch.Tensor]:
        return glue.output_buffers(layer)

    def attention_mirrors(self, layer: AttentionLayerBase) -> dict[str, float]:
        return glue.vocabulary_mirrors(layer)

    def make_mapper(self, **entries) -> WeightsMapper:
        return WeightsMapper(**{k: v for k, v in entries.items() if v is not None})

    def compose_mappers(self, left: WeightsMapper, right: WeightsMapper) -> WeightsMapper:
        return left | right

    def map_name(self, mapper: WeightsMapper, name: str):
        return mapper.map_name_with_shard(name)

    def apply_mapper(self, mapper: WeightsMapper, weights: Weights) -> list[tuple[str, torch.Tensor]]:
        return [(name, tensor) for name, tensor, _ in mapper.apply(weights)]

    def mapper_entries(self, mapper: WeightsMapper) -> dict[str, dict]:
        return {stage: dict(getattr(mapper, stage)) for stage in ("regex", "substr", "stacked", "prefix", "suffix")}

    def cache_scale_mapper(self, quant_method: str) -> WeightsMapper:
        return QuantConfig(quant_method).get_cache_scale_mapper() if quant_method else cache_scale_mapper()

    def default_weight_loader(self, param: torch.Tensor, weight: torch.Tensor) -> None:
        default_weight_loader(param, weight)

    def auto_load(self, module: torch.nn.Module, weights: Weights, *, mapper=None, quant_method=None,
                  skip_prefixes=(), skip_substrs=()) -> set[str]:
        if quant_method is not None:
            # the attribute find_quant_config reads; Module.__setattr__ is typed for tensors and modules only
            module.quant_config = QuantConfig(quant_method)  # type: ignore[assignment]
        loader = AutoWeightsLoader(module, skip_prefixes=skip_prefixes, skip_substrs=skip_substrs)
        return loader.load_weights(weights, mapper=mapper)

    def count_copies(self, fn, *args) -> int:
        with CopyCounter() as counter:
            fn(*args)
        return counter.copied

    # ----------------------------------------------------------------- model
    def build_model(self, spec: ModelSpec, *, device: str):
        return api.build(spec, device=device)

    def first_load(self, model, weights: Weights | Path) -> set[str]:
        return api.first_load(model, weights)

    def dummy_load(self, model) -> None:
        api.dummy_load(model)

    def reload(self, model, weights: Weights | Path) -> None:
        api.reload(model, weights)

    def open_reload(self, model):
        return api.reload_session(model)

    def count_loader_call(self, loader, param, loaded_weight) -> int:
        return credited_elements(loader, param, loaded_weight, cap=param.numel())

    def export_kernel_state(self, model) -> dict[str, torch.Tensor]:
        return api.export(model)

    def kernel_tensors(self, model) -> dict[str, torch.Tensor]:
        return glue.kernel_tensors(model, dotted_root=True)

    def host_mirrors(self, model) -> dict[str, float]:
        return glue.host_mirrors(model, AttentionLayerBase, self.attention_mirrors)

    def processing_order(self, model) -> list[str]:
        return list(model.loadspec_order)

    def slice_head_scales(self, scale, *, kind, total_heads, total_kv_heads, tp_rank, tp_size) -> torch.Tensor:
        return tp_head_scales(scale, kind=kind, total_heads=total_heads, total_kv_heads=total_kv_heads,
                              tp_rank=tp_rank, tp_size=tp_size)
