"""Static W8A8 checkpoints: every FP8 linear carries a static activation scale ``input_scale`` [STATIC-1..3].

A static checkpoint is a ``CheckpointLayout`` of a spec whose ``activation_scheme`` is ``"static"`` (or whose
format is static, ModelOpt): the layout itself writes each FP8 projection's ``input_scale`` in the producer's
per-tensor shape and dtype (from the producer table, ``synthetic_checkpoint``), with values seeded by the
layout's seed, and its ``config.json`` says static activations in the producer's words; so the layout alone,
as a reproducer directory holds it, rebuilds the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from loadspec.reference.spec import ModelSpec
from loadspec.reference.vocabulary import FORMAT_ACTIVATION_SCHEMES
from loadspec.strategies.layouts import CheckpointLayout, checkpoint_layouts
from loadspec.strategies.synthetic import hf_linears

__all__ = ["as_static", "input_scale_names", "static_input_tensors", "static_checkpoint", "static_input_layouts"]


def as_static(spec: ModelSpec) -> ModelSpec:
    """``spec`` with static activations; raises ``InvalidArgument`` when it has no FP8 linear to carry them."""
    if not isinstance(spec, ModelSpec):
        raise InvalidArgument(f"graph={spec!r}, but should be a ModelSpec")
    fixed = FORMAT_ACTIVATION_SCHEMES.get(spec.quant_method or "")
    if spec.quant_method is None or fixed not in (None, "static"):
        raise InvalidArgument(f"quant_method={spec.quant_method!r} has no static activation scheme")
    if not any(q != "none" for layer in spec.layers for q in layer.linear_quants().values()):
        raise InvalidArgument("the graph has no FP8 linear, so a static checkpoint would carry no input_scale")
    return spec.with_(activation_scheme="static")


def input_scale_names(spec: ModelSpec) -> tuple[str, ...]:
    """Checkpoint names of the ``input_scale`` of every FP8 projection (``q_proj``, not ``qkv_proj``)."""
    return tuple(f"{name}.input_scale" for index in range(len(spec.layers))
                 for name, (_, _, scheme) in hf_linears(spec, index).items() if scheme != "none")


def static_input_tensors(layout: CheckpointLayout) -> dict[str, torch.Tensor]:
    """The ``input_scale`` tensors ``layout`` writes: one per FP8 projection (ModelOpt/AutoFP8/Quark ``()``
    float32, compressed-tensors ``(1,)`` in the model dtype), less ``missing``. Empty unless
    ``layout.spec.static_input_scales`` [STATIC-1]."""
    return {name: tensor for name, tensor in layout.tensors() if name.endswith(".input_scale")}


def static_checkpoint(layout: CheckpointLayout) -> list[tuple[str, torch.Tensor]]:
    """``layout.tensors()``: the layout writes the input scales of a static spec itself, each once; a name in
    ``layout.missing`` is left out [STATIC-3]. Kept so that a test reads as what it loads."""
    return layout.tensors()


@st.composite
def static_input_layouts(draw: st.DrawFn, graph: ModelSpec, *,
                         producers: Iterable[str] | None = None) -> CheckpointLayout:
    """Draws ``CheckpointLayout``s of ``as_static(graph)`` in one of ``producers``' layouts (default: those of
    the graph's quant method, from the producer table); build its tensors with ``static_checkpoint``.

    A graph without an FP8 linear, or whose format has no static scheme, raises ``InvalidArgument`` when drawn.
    """
    return draw(checkpoint_layouts(as_static(graph), producers=producers))
