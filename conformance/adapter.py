"""The adapter protocol: what an engine exposes so the suite can check its loader.

Two tiers. **Primitives** wrap the engine's own scale parameter, KV-cache method,
mapper, cache-scale mappers, default and automatic loaders, and copy counter.
**Model** builds a model from a ``ModelSpec`` with the engine's own layer
classes, loads and reloads it, and exports its processed kernel state in
canonical names. Objects the suite gets back (layers, mappers, models) are
opaque handles it only passes back to the adapter; everything it compares is a
plain tensor, float or string.

Capabilities, declared by the adapter, decide which tests run; a test that needs
an undeclared capability is skipped with the capability named in the report.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from loadspec.reference.spec import ModelSpec
from loadspec.strategies.capabilities import (
    ATTENTION_SINKS,
    FP8_PER_CHANNEL,
    FP8_PER_CHANNEL_ANY_FORMAT,
    FP8_PER_TENSOR,
    HOST_MIRRORS,
    KV_SCALES_PER_HEAD,
    MIXER_CONTAINER,
    MLA,
    MODEL,
    NESTED_WRAPPERS,
    PER_TOKEN_HEAD_KV,
    PRIMITIVES,
    REDUCED_PRECISION_PARAMS,
    STATIC_INPUT_SCALES,
    TIED_EMBEDDINGS,
    TP_HEAD_SLICING,
)

Weights = Iterable[tuple[str, torch.Tensor]]

CAPABILITIES: dict[str, str] = {
    PRIMITIVES: "scale parameter, KV-cache method, mapper, loaders and copy counter (the primitives tier)",
    MODEL: "build, first-load, reload and export models from a ModelSpec (the model tier)",
    "reload_sessions": "a reload can take weights over several calls before it finishes",
    "processing_order": "reports the order in which layers were processed",
    MLA: "MLA attention (kv_a/kv_b projections, absorbed W_UK_T/W_UV)",
    FP8_PER_TENSOR: "FP8 e4m3 linear weights with per-tensor scales",
    FP8_PER_CHANNEL: "FP8 e4m3 linear weights with per-channel scales, in the formats whose config states them "
                     "(compressed-tensors weights.strategy channel, Quark qscheme per_channel)",
    FP8_PER_CHANNEL_ANY_FORMAT: "per-channel FP8 linears under fp8/modelopt configs too, which no real producer "
                                "writes (the reference's idealization; engines leave it undeclared)",
    TIED_EMBEDDINGS: "lm_head tied to embed_tokens",
    NESTED_WRAPPERS: "decoder stacks under wrapper modules (language_model.model.*)",
    MIXER_CONTAINER: "attention under a 'mixer' container (NemotronH naming)",
    PER_TOKEN_HEAD_KV: "per-token-head KV-cache dtypes (int4/int8/fp8_per_token_head)",
    REDUCED_PRECISION_PARAMS: "bf16/fp16 parameter dtypes",
    HOST_MIRRORS: "keeps host copies of the KV-cache scales (_q/_k/_v/_prob_scale_float, _k/_v_scale_cpu); "
                  "without it the model-tier mirror checks are skipped",
    STATIC_INPUT_SCALES: "static FP8 activation scales (input_scale) decided from the quantization config "
                         "(compressed-tensors dynamic: false, Quark static, Fp8Config activation_scheme static)",
    KV_SCALES_PER_HEAD: "per-attention-head KV-cache scales (compressed-tensors kv_cache_scheme strategy attn_head): "
                        "build models whose spec has kv_scale_strategy='attn_head'",
    TP_HEAD_SLICING: "slice_head_scales: the per-head KV-cache scales one tensor-parallel rank holds",
    ATTENTION_SINKS: "attention layers owning a parameter besides their KV-cache scales (attention sinks: "
                     "LayerSpec.sinks, attn.sinks [num_heads] in checkpoint and export)",
    "skip_rules": "the automatic loader takes skip_prefixes/skip_substrs",
    "mapper_entries": "mapper_entries: a mapper's entries per stage, keyed as the engine keys them (NAMES-10's "
                      "shared-key case reuses the cache-scale mapper's own keys)",
    "cuda": "runs on CUDA devices",
}

PRIMITIVE_METHODS = (
    "new_scale_parameter", "load_scale", "make_attention", "attention_scale_parameters", "create_scale_weights",
    "process_attention", "attention_outputs", "attention_mirrors", "make_mapper", "compose_mappers", "map_name",
    "apply_mapper", "cache_scale_mapper", "default_weight_loader", "auto_load", "count_copies",
)
MODEL_METHODS = (
    "build_model", "first_load", "dummy_load", "reload", "export_kernel_state", "kernel_tensors", "host_mirrors",
)
SESSION_METHODS = ("open_reload", "count_loader_call")
ORDER_METHODS = ("processing_order",)
TP_METHODS = ("slice_head_scales",)
MAPPER_METHODS = ("mapper_entries",)


@runtime_checkable
class Adapter(Protocol):
    """What an engine implements to be checked; see ``ReferenceAdapter`` for a complete example."""

    name: str
    version: str
    report_id: str
    capabilities: frozenset[str]
    notes: str

    # ------------------------------------------------------- primitives: SCALE
    def new_scale_parameter(self, *, device: str) -> torch.Tensor:
        """A fresh KV-cache scale parameter, as the engine's KV-cache method creates it."""

    def load_scale(self, param: torch.Tensor, weight: torch.Tensor) -> None:
        """Load ``weight`` into ``param`` through the parameter's own ``weight_loader``."""

    # ----------------------------------------------------- primitives: KVPROC
    def make_attention(self, *, kv_cache_dtype: str, device: str) -> Any:
        """An attention layer with the engine's KV-cache method attached, scale parameters created."""

    def attention_scale_parameters(self, layer: Any) -> dict[str, torch.Tensor]:
        """The layer's current ``q_scale``/``k_scale``/``v_scale``/``prob_scale`` parameters (absent ones omitted)."""

    def create_scale_weights(self, layer: Any) -> None:
        """Call the KV-cache method's ``create_weights`` on the layer again."""

    def process_attention(self, layer: Any) -> None:
        """Run the KV-cache method's processing (``process_weights_after_loading``) on the layer."""

    def attention_outputs(self, layer: Any) -> dict[str, torch.Tensor]:
        """The device output scales ``_q_scale``, ``_k_scale``, ``_v_scale``, ``_prob_scale`` (live tensors)."""

    def attention_mirrors(self, layer: Any) -> dict[str, float]:
        """Host copies of the scales.

        ``_q_scale_float`` ... ``_prob_scale_float``, ``_k_scale_cpu``, ``_v_scale_cpu``.
        """

    # -------------------------------------------------------- primitives: MAP
    def make_mapper(self, *, regex: dict | None = None, substr: dict | None = None, stacked: dict | None = None,
                    prefix: dict | None = None, suffix: dict | None = None) -> Any:
        """A mapper with these entries (``stacked`` values are ``(replacement, shard_id)``)."""

    def compose_mappers(self, left: Any, right: Any) -> Any:
        """``left | right``."""

    def map_name(self, mapper: Any, name: str) -> tuple[str, Any] | None:
        """``(mapped name, shard id or None)``, or ``None`` when the mapper drops the name."""

    def apply_mapper(self, mapper: Any, weights: Weights) -> list[tuple[str, torch.Tensor]]:
        """The mapper applied to ``(name, tensor)`` pairs, dropped names removed."""

    def cache_scale_mapper(self, quant_method: str) -> Any:
        """The cache-scale mapper of the engine's quantization config for ``quant_method``."""

    # ------------------------------------------------------- primitives: LOAD
    def default_weight_loader(self, param: torch.Tensor, weight: torch.Tensor) -> None:
        """The engine's default weight loader."""

    def auto_load(self, module: torch.nn.Module, weights: Weights, *, mapper: Any = None,
                  quant_method: str | None = None, skip_prefixes: tuple[str, ...] = (),
                  skip_substrs: tuple[str, ...] = ()) -> set[str]:
        """The engine's automatic loader on a plain ``torch.nn.Module`` tree; returns the names it loaded.

        With ``quant_method``, the engine's quantization config for it is attached to ``module`` first.
        """

    # ------------------------------------------------------ primitives: COUNT
    def count_copies(self, fn, *args) -> int:
        """Elements the engine's copy counter counts while ``fn(*args)`` runs."""

    # ------------------------------------------------------------ model tier
    def build_model(self, spec: ModelSpec, *, device: str) -> Any:
        """A model of ``spec`` built with the engine's own layer classes, in checkpoint format."""

    def first_load(self, model: Any, weights: Weights | Path) -> set[str]:
        """Load a full checkpoint (pairs or a directory) and process it."""

    def dummy_load(self, model: Any) -> None:
        """Fill the model with the engine's dummy weights and process it."""

    def reload(self, model: Any, weights: Weights | Path) -> None:
        """Reload weights into a processed model with the engine's layerwise reload."""

    def export_kernel_state(self, model: Any) -> dict[str, torch.Tensor]:
        """Processed kernel state in canonical names (see the README), as CPU tensors.

        The suite compares it with the reference's bit for bit [LOAD-17, RELOAD-13], so the adapter, not the
        test, normalizes what an engine legitimately holds differently: FP8 weights as contiguous ``[out, in]``
        whatever the kernel layout (a transposed view is exported transposed back); a per-tensor
        ``weight_scale`` and every ``input_scale`` as 0-d float32, a per-channel one as ``(out,)`` float32
        (not ``(out, 1)``); embeddings and ``lm_head`` cut to the first ``vocab_size`` rows (no padding); each
        attention layer's ``q/k/v/prob_scale`` as 0-d float32 copies of the processed device scales; norms
        as held. Names are the engine-format (fused ``qkv_proj``, ``gate_up_proj``) module names plus the
        tensor name; nothing else is exported.
        """

    def kernel_tensors(self, model: Any) -> dict[str, torch.Tensor]:
        """Every live parameter and buffer a CUDA graph could capture, by name (for ``data_ptr`` checks)."""

    def host_mirrors(self, model: Any) -> dict[str, float]:
        """Host copies of the KV-cache scales: ``<attn>._k_scale_float``, ``<attn>._k_scale_cpu``, ...

        Every copy the engine keeps, under the contract's names; with ``host_mirrors`` declared, a mirror the
        contract names and this omits is a failure [LOAD-18, RELOAD-14].
        """

    # --------------------------------------------------- optional capabilities
    def open_reload(self, model: Any) -> Any:
        """[reload_sessions] An open reload with ``load(weights)`` and ``finish()``."""

    def count_loader_call(self, loader, param: torch.Tensor, loaded_weight: torch.Tensor) -> int:
        """[reload_sessions] Elements the layerwise reload credits ``param`` with for one call.

        The call is ``loader(param, loaded_weight)``.
        """

    def processing_order(self, model: Any) -> list[str]:
        """[processing_order] Module names processed by the last load or reload, in order."""

    def mapper_entries(self, mapper: Any) -> dict[str, dict]:
        """[mapper_entries] ``mapper``'s entries per stage (``regex``, ``substr``, ``stacked``, ``prefix``,
        ``suffix``; empty stages may be left out), keys as the engine holds them, so that ``make_mapper`` given
        one of them makes an entry that shares its key [NAMES-10]."""

    def slice_head_scales(self, scale: torch.Tensor, *, kind: str, total_heads: int, total_kv_heads: int,
                          tp_rank: int, tp_size: int) -> torch.Tensor:
        """[tp_head_slicing] The ``(n,)`` per-head scales rank ``tp_rank`` of ``tp_size`` loads from the whole
        checkpoint tensor ``scale`` of ``kind`` (``"q"``, ``"k"``, ``"v"``) [HEADS-8]."""


def capabilities_table() -> str:
    """The capabilities as a Markdown table, as the README shows it."""
    rows = [f"| `{name}` | {meaning} |" for name, meaning in CAPABILITIES.items()]
    return "\n".join(["| capability | the adapter supports |", "|---|---|", *rows])


def required_methods(capabilities: frozenset[str]) -> tuple[str, ...]:
    """Methods an adapter declaring ``capabilities`` must implement."""
    methods: tuple[str, ...] = ()
    if PRIMITIVES in capabilities:
        methods += PRIMITIVE_METHODS
    if MODEL in capabilities:
        methods += MODEL_METHODS
    if "reload_sessions" in capabilities:
        methods += SESSION_METHODS
    if "processing_order" in capabilities:
        methods += ORDER_METHODS
    if TP_HEAD_SLICING in capabilities:
        methods += TP_METHODS
    if "mapper_entries" in capabilities:
        methods += MAPPER_METHODS
    return methods


def check_adapter(adapter: Any) -> list[str]:
    """Problems that make ``adapter`` unusable, each one line; empty when it is fine."""
    problems = []
    for attribute in ("name", "version", "capabilities"):
        if not hasattr(adapter, attribute):
            problems.append(f"adapter {adapter!r} has no attribute {attribute!r}")
    if problems:
        return problems
    unknown = sorted(set(adapter.capabilities) - set(CAPABILITIES))
    if unknown:
        problems.append(f"adapter {adapter.name!r} declares unknown capabilities {unknown}; "
                        f"valid: {', '.join(sorted(CAPABILITIES))}")
    missing = [m for m in required_methods(frozenset(adapter.capabilities)) if not callable(getattr(adapter, m, None))]
    if missing:
        problems.append(f"adapter {adapter.name!r} lacks methods its capabilities require: {', '.join(missing)}")
    return problems
