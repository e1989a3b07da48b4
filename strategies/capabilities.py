"""The adapter capabilities that decide what may be drawn for an engine, and what a ``ModelSpec`` needs.

An adapter declares capability names in ``adapter.capabilities``. The suite's table of
every capability and its meaning is ``loadspec.conformance.adapter.CAPABILITIES``; it
spells the names below from here, so each is defined once. ``make_strategies_namespace``
reads ``GRAPH_CHOICES`` and ``GRAPH_FLAGS`` to keep ``layer_graphs()`` inside an adapter's.
"""

from __future__ import annotations

from loadspec.reference.spec import ModelSpec
from loadspec.reference.vocabulary import FORMAT_ACTIVATION_SCHEMES, PER_CHANNEL_METHODS, PER_TOKEN_HEAD_KV_DTYPES

__all__ = ["PRIMITIVES", "MODEL", "MLA", "FP8_PER_TENSOR", "FP8_PER_CHANNEL", "TIED_EMBEDDINGS", "NESTED_WRAPPERS",
           "MIXER_CONTAINER", "PER_TOKEN_HEAD_KV", "REDUCED_PRECISION_PARAMS", "HOST_MIRRORS", "GRAPH_CHOICES",
           "GRAPH_FLAGS", "spec_capabilities", "ATTENTION_SINKS", "STATIC_INPUT_SCALES", "KV_SCALES_PER_HEAD",
           "TP_HEAD_SLICING", "FP8_PER_CHANNEL_ANY_FORMAT"]

PRIMITIVES = "primitives"
"""The primitives tier: scale parameter, KV-cache method, mapper, loaders, copy counter."""
MODEL = "model"
"""The model tier: build, load, reload and export a model of a ``ModelSpec``."""
MLA = "mla"
FP8_PER_TENSOR = "fp8_per_tensor"
FP8_PER_CHANNEL = "fp8_per_channel"
FP8_PER_CHANNEL_ANY_FORMAT = "fp8_per_channel_any_format"
"""Per-channel FP8 linears under a quant format whose config cannot state them (``fp8``, ``modelopt``: see
``vocabulary.PER_CHANNEL_METHODS``). The reference builds them; an engine that reads each format's config as its
producer writes it declares ``fp8_per_channel`` without this."""
TIED_EMBEDDINGS = "tied_embeddings"
NESTED_WRAPPERS = "nested_wrappers"
MIXER_CONTAINER = "mixer_container"
PER_TOKEN_HEAD_KV = "per_token_head_kv"
REDUCED_PRECISION_PARAMS = "reduced_precision_params"
HOST_MIRRORS = "host_mirrors"
ATTENTION_SINKS = "attention_sinks"
"""Attention layers owning a parameter besides their KV-cache scales (``LayerSpec.sinks``) [RELOAD-15]."""
"""The engine keeps host copies of the KV-cache scales; without it the model-tier mirror checks are skipped
[LOAD-18, RELOAD-14]."""

STATIC_INPUT_SCALES = "static_input_scales"
"""Static activation scales decided from the config (compressed-tensors ``dynamic: false``, Quark static,
Fp8Config ``activation_scheme: static``); ModelOpt FP8, static by format, needs no capability [STATIC-1..3]."""
KV_SCALES_PER_HEAD = "kv_scales_per_head"
"""Per-KV-head scales (compressed-tensors ``kv_cache_scheme.strategy: attn_head``) [HEADS-1..7]."""
TP_HEAD_SLICING = "tp_head_slicing"
"""The adapter's ``slice_head_scales``: which per-head scales a tensor-parallel rank holds [HEADS-8]."""

GRAPH_CHOICES: dict[str, dict[str, str]] = {
    "attention": {"mla": MLA},
    "linear_quants": {"fp8_per_tensor": FP8_PER_TENSOR, "fp8_per_channel": FP8_PER_CHANNEL},
    "kv_cache_dtypes": dict.fromkeys(PER_TOKEN_HEAD_KV_DTYPES, PER_TOKEN_HEAD_KV),
    "containers": {"mixer": MIXER_CONTAINER},
    "params_dtypes": {"bfloat16": REDUCED_PRECISION_PARAMS, "float16": REDUCED_PRECISION_PARAMS},
}
"""``layer_graphs`` argument -> {choice: the capability that choice needs}; unlisted choices need none."""

GRAPH_FLAGS: dict[str, str] = {"allow_tied": TIED_EMBEDDINGS, "allow_wrappers": NESTED_WRAPPERS,
                               "allow_per_channel_any_format": FP8_PER_CHANNEL_ANY_FORMAT}
"""``layer_graphs`` flag -> the capability that ``True`` needs."""


def spec_choices(spec: ModelSpec) -> dict[str, tuple[str, ...]]:
    """The choice ``spec`` made for each ``GRAPH_CHOICES`` argument (every linear's scheme for ``linear_quants``)."""
    return {"attention": (spec.attention,),
            "linear_quants": tuple(q for layer in spec.layers for q in layer.linear_quants().values()),
            "kv_cache_dtypes": (spec.kv_cache_dtype,), "containers": (spec.container,),
            "params_dtypes": (spec.params_dtype,)}


def spec_capabilities(spec: ModelSpec) -> frozenset[str]:
    """The capabilities an adapter needs to build and load a model of ``spec`` (``"model"`` and what it uses).

    .. code-block:: pycon

        >>> sorted(spec_capabilities(ModelSpec(attention="mla", tie_embeddings=True)))
        ['mla', 'model', 'tied_embeddings']
        >>> sorted(spec_capabilities(DEFAULT_SPEC))  # quant_method "fp8": per-channel is no Fp8Config scheme
        ['fp8_per_channel', 'fp8_per_channel_any_format', 'fp8_per_tensor', 'model']
        >>> sorted(spec_capabilities(dataclasses.replace(DEFAULT_SPEC, quant_method="compressed-tensors")))
        ['fp8_per_channel', 'fp8_per_tensor', 'model']
    """
    needs = {MODEL}
    for argument, chosen in spec_choices(spec).items():
        needs.update(GRAPH_CHOICES[argument][c] for c in chosen if c in GRAPH_CHOICES[argument])
    per_channel = "fp8_per_channel" in spec_choices(spec)["linear_quants"]
    flags = {"allow_tied": spec.tie_embeddings, "allow_wrappers": bool(spec.wrapper),
             "allow_per_channel_any_format": per_channel and spec.quant_method not in PER_CHANNEL_METHODS}
    needs.update(GRAPH_FLAGS[flag] for flag, used in flags.items() if used)
    if any(layer.sinks for layer in spec.layers):  # opt-in (allow_sinks), so not a GRAPH_FLAGS default
        needs.add(ATTENTION_SINKS)
    if spec.static_input_scales and FORMAT_ACTIVATION_SCHEMES.get(spec.quant_method or "") != "static":
        needs.add(STATIC_INPUT_SCALES)
    if spec.kv_scale_strategy != "tensor":
        needs.add(KV_SCALES_PER_HEAD)
    return frozenset(needs)
