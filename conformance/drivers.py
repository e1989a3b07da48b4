"""Scenarios the suite runs identically against the implementation and the reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loadspec.conformance.assertions import outputs_as_floats

KINDS = ("q", "k", "v", "prob")


@dataclass
class AttentionResult:
    """What processing an attention layer left: output scales and host mirrors, or the error raised."""

    outputs: dict[str, float] | None
    mirrors: dict[str, float] | None
    error: Exception | None = None


def process_scales(adapter, *, kv_cache_dtype: str, values: dict, device: str = "cpu") -> AttentionResult:
    """Build an attention layer, load ``values`` (kind -> float, ``None`` = absent), process it."""
    layer = adapter.make_attention(kv_cache_dtype=kv_cache_dtype, device=device)
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
    from hypothesis import settings

    return settings(max_examples=max(3, settings.default.max_examples // 3))


def graphs_for(adapter, **overrides):
    """``layer_graphs()`` limited to what ``adapter`` declares it supports."""
    from loadspec.strategies.graphs import layer_graphs

    caps = adapter.capabilities
    options = dict(
        attention=("mha", "mla") if "mla" in caps else ("mha",),
        linear_quants=("none",) + tuple(q for q, cap in (("fp8_per_tensor", "fp8_per_tensor"),
                                                       ("fp8_per_channel", "fp8_per_channel")) if cap in caps),
        containers=("self_attn", "mixer") if "mixer_container" in caps else ("self_attn",),
        allow_tied="tied_embeddings" in caps,
        allow_wrappers="nested_wrappers" in caps,
        params_dtypes=("float32", "bfloat16", "float16") if "reduced_precision_params" in caps else ("float32",),
        kv_cache_dtypes=("auto", "bfloat16", "fp8", "fp8_e4m3")
        + (("int8_per_token_head", "fp8_per_token_head") if "per_token_head_kv" in caps else ()),
    )
    options.update(overrides)
    return layer_graphs(**options)


def built(adapter, spec, weights, *, device: str = "cpu"):
    """A model of ``spec`` first-loaded with ``weights``."""
    model = adapter.build_model(spec, device=device)
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


def must_kv_scales():
    """KV-scale sets whose outcome every MUST rule defines: k always present (v-only is KVPROC-5, a SHOULD)."""
    from loadspec.strategies.scales import kv_scale_sets, scale_values

    return kv_scale_sets(values=scale_values(allow_sentinel=False)).filter(lambda s: s.get("k") is not None)


def layouts_for(spec, **options):
    """``checkpoint_layouts(spec)`` delivering every weight and a k_scale per attention layer (RELOAD-2)."""
    from loadspec.strategies.layouts import checkpoint_layouts

    return checkpoint_layouts(spec, kv_scales=must_kv_scales(), **options)
