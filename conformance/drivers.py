"""Scenarios the suite runs identically against the implementation and the reference.

What an engine's own tests would call is public in ``loadspec.strategies``
(``make_strategies_namespace(adapter)`` draws what the adapter's capabilities declare);
this module is the suite's glue on top: the MUST selection, which reads the rule table
(``graphs_for``, ``layouts_for``, ``must_kv_scales``), reproducer recording, settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import settings

from loadspec.conformance.assertions import outputs_as_floats
from loadspec.conformance.reproducers import Case, record_case
from loadspec.conformance.rules import MUST, RULES_BY_ID
from loadspec.strategies import checkpoint_layouts, kv_scale_sets, make_strategies_namespace, scale_values
from loadspec.strategies.capabilities import ATTENTION_SINKS
from loadspec.strategies.layouts import compatible_producers
from loadspec.strategies.producers import PRODUCERS
from loadspec.strategies.scales import stored_as


@dataclass
class AttentionResult:
    """What processing an attention layer left: output scales and host mirrors, or the error raised."""

    outputs: dict[str, float] | None
    mirrors: dict[str, float] | None
    error: Exception | None = None


_RUN_DEVICE = ["cpu"]


def set_run_device(device: str) -> None:
    """Set the device this run builds on (the plugin's ``--device``)."""
    _RUN_DEVICE[0] = device


def run_device() -> str:
    """The device this run builds every layer and model on: ``--device`` (``$LOADSPEC_DEVICE``), else ``cpu``.

    The suite's ``device`` fixture returns it; ``built`` and ``process_scales`` default to it.
    """
    return _RUN_DEVICE[0]


def process_scales(adapter, *, kv_cache_dtype: str, values: dict, device: str | None = None) -> AttentionResult:
    """Build an attention layer (on ``device``, default the run's), load ``values`` (kind -> float, ``None`` =
    absent), process it."""
    layer = adapter.make_attention(kv_cache_dtype=kv_cache_dtype, device=device or run_device())
    params = adapter.attention_scale_parameters(layer)
    for kind, value in values.items():
        if value is not None:
            adapter.load_scale(params[f"{kind}_scale"], torch.tensor(value, dtype=torch.float32))
    try:
        adapter.process_attention(layer)
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return AttentionResult(None, None, exc)
    return AttentionResult(outputs_as_floats(adapter.attention_outputs(layer)), adapter.attention_mirrors(layer))


def mapper_entries(mapper) -> dict:
    """The entries of a reference ``WeightsMapper`` as ``make_mapper`` keyword arguments."""
    return {
        "regex": {getattr(p, "pattern", p): v for p, v in mapper.regex.items()},
        "substr": dict(mapper.substr), "stacked": dict(mapper.stacked),
        "prefix": dict(mapper.prefix), "suffix": dict(mapper.suffix),
    }


def mapper_in(adapter, mapper):
    """The adapter's own mapper with the entries of a reference mapper."""
    return adapter.make_mapper(**mapper_entries(mapper))


def heavy():
    """Settings for model-tier tests: a third of the active profile's examples (at least 3)."""
    return settings(max_examples=max(3, settings.default.max_examples // 3))


def graphs_for(adapter, **options):
    """``make_strategies_namespace(adapter).layer_graphs(**options)``: specs ``adapter`` declares it can build,
    kept to those with at least one MUST-covered producer layout."""
    return make_strategies_namespace(adapter).layer_graphs(**options).filter(must_producers)


def real_model_options(adapter) -> dict[str, bool]:
    """``graphs_for`` options that also draw what real models have and the adapter can build: attention layers
    with sinks when it declares ``attention_sinks`` [RELOAD-15]."""
    return {"allow_sinks": ATTENTION_SINKS in adapter.capabilities}


def built(adapter, spec, weights, *, device: str | None = None):
    """A model of ``spec`` built on ``device`` (default: the run's) and first-loaded with ``weights``."""
    model = adapter.build_model(spec, device=device or run_device())
    adapter.first_load(model, weights)
    return model


def live_pointers(adapter, model) -> dict[str, int]:
    """``data_ptr`` of every live kernel tensor."""
    return {name: tensor.data_ptr() for name, tensor in adapter.kernel_tensors(model).items()}


def layer_of(name: str) -> str:
    """The module owning a (mapped) parameter name."""
    return name.rsplit(".", 1)[0]


def close_quietly(session) -> None:
    """Finish a reload session whose test already failed, ignoring the rejection it may raise."""
    try:
        session.finish()
    except ValueError:
        pass


REDUCED_EXACT_RANGE = (2.0**-14, 2.0**15)  # bf16 values in here are exact in float16 too


def exact_in_reduced_precision(value: float) -> float:
    """``value`` rounded to bfloat16 and clamped into ``REDUCED_EXACT_RANGE``: exact in bf16 and fp16 alike."""
    low, high = REDUCED_EXACT_RANGE
    return min(max(stored_as(value, torch.bfloat16), low), high)


def within_reduced_precision(value: float) -> float:
    """``value`` clamped into ``REDUCED_EXACT_RANGE``: bf16 and fp16 may round it, but hold it as a normal number
    (neither 0 nor inf, which KVPROC-7 rejects and vLLM's ``assert layer.k_scale > 0.0`` trips on)."""
    low, high = REDUCED_EXACT_RANGE
    return min(max(value, low), high)


def must_kv_scales(params_dtype: str = "float32", *, required: tuple[str, ...] = ("k",), rounded: bool = False):
    """KV-scale sets whose outcome every MUST rule defines.

    The ``required`` kinds are always present (k by default: v-only is KVPROC-5, a SHOULD); in a
    bf16/fp16 model every value is exact in the model's dtype, since rounding a float32 scale
    there is SCALE-2's divergence. ``rounded``: values the model's dtype rounds but holds in its normal
    range, for rules that compare an engine with itself whatever it stores (host mirrors, KVPROC-11).
    """
    values = scale_values(allow_sentinel=False)
    if params_dtype != "float32":
        values = values.map(within_reduced_precision if rounded else exact_in_reduced_precision)
    return kv_scale_sets(required=required, values=values)


SELF_ATTN_ONLY_PRODUCERS = ("quark", "fused-qkv")  # NAMES-4 and NAMES-7 name self_attn; mixer is NAMES-14


def is_must_producer(producer_id: str) -> bool:
    """Whether the NAMES rule of ``producer_id``'s layout is a MUST."""
    return RULES_BY_ID[PRODUCERS[producer_id].rule].level == MUST


def must_producers(spec) -> tuple[str, ...]:
    """Producers of ``spec``'s quant method whose names a MUST rule covers in ``spec``'s container."""
    return tuple(p for p in compatible_producers(spec) if is_must_producer(p)
                 and not (spec.container != "self_attn" and p in SELF_ATTN_ONLY_PRODUCERS))


def layouts_for(spec, **options):
    """``checkpoint_layouts(spec)`` in MUST-covered layouts, every weight, a k_scale per attention layer [RELOAD-2]."""
    options.setdefault("producers", must_producers(spec))  # empty: InvalidArgument, never a SHOULD layout
    return checkpoint_layouts(spec, kv_scales=must_kv_scales(spec.params_dtype), **options)


def draw_case(impl, request, data, *roles, **graph_options):
    """Draw a graph and one MUST layout per role (labelled), and record them as the test's reproducer."""
    spec = data.draw(graphs_for(impl, **graph_options), label="graph")
    layouts = {role: data.draw(layouts_for(spec), label=f"{role} checkpoint") for role in roles}
    record_case(request, Case(request.node.nodeid, layouts=layouts))
    return spec, layouts


# Checkpoint projections -> the canonical fused layers that own them (README, "Canonical names"; MLA keeps q_proj).
FUSED_MLP = {".gate_proj.": (".gate_up_proj.", 0), ".up_proj.": (".gate_up_proj.", 1)}
FUSED_QKV = {".q_proj.": (".qkv_proj.", "q"), ".k_proj.": (".qkv_proj.", "k"), ".v_proj.": (".qkv_proj.", "v")}


def canonical_mapper(ref, spec):
    """``spec``'s checkpoint names -> canonical names in the oracle's mappers: fused projections | cache scales."""
    fused = ref.make_mapper(stacked={**FUSED_QKV, **FUSED_MLP} if spec.attention == "mha" else FUSED_MLP)
    return ref.compose_mappers(fused, ref.cache_scale_mapper(spec.quant_method)) if spec.quant_method else fused


def owners(ref, spec, weights) -> list[str]:
    """The canonical layer each checkpoint weight of ``weights`` is delivered to (the oracle's mapping), in order."""
    mapper = canonical_mapper(ref, spec)
    found = [layer_of(ref.map_name(mapper, name)[0]) for name, _ in weights]
    if spec.tie_embeddings:
        found = [f"{spec.prefix}embed_tokens" if o == layer_of(spec.lm_head_name) else o for o in found]
    return found


def attention_modules(spec) -> set[str]:
    """The module names of ``spec``'s attention layers (the layers processed last on a reload) [ORDER-1]."""
    return {spec.attention_prefix(i)[:-1] for i in range(len(spec.layers))}
