"""Shard scales of fused per-tensor FP8 linears on which re-quantization is hardest [LOAD-20].

Loading the shards of a fused per-tensor FP8 linear (``q/k/v_proj`` -> ``qkv_proj``, ``gate/up_proj`` ->
``gate_up_proj``) re-quantizes each shard ``j`` to the largest shard scale ``m``: every byte ``x`` becomes
``rne_e4m3(x * s_j / m)``. With random weights the result of an imprecise computation differs from the exact one
on about 0.2% of the bytes, so a small drawn model may show none. ``near_midpoint_scales`` draws the scales so
that it must: ``m = 2^e`` and ``s_j = m * 2^-k * (mu + 2^-13)``, ``mu = 1 + (2i + 1) / 16`` the midpoint between
the e4m3 significands ``1 + i/8`` (``i`` even) and ``1 + (i+1)/8``. For every power-of-two byte ``x`` of shard
``j`` (about one byte in eight of a random weight), ``x * s_j / m`` lies ``2^-13`` past that midpoint: the exact
float32 computation rounds up, while a computation that rounds ``x * s_j`` to 11 significant bits or fewer
(float16, bfloat16: vLLM's ``w8a8_utils.per_tensor_dequantize``) lands on the midpoint and ties down to the
even significand. The scales are recorded in the layout's ``replaced``, so a reproducer rebuilds them.
"""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from loadspec.strategies.layouts import CheckpointLayout
from loadspec.strategies.producers import PRODUCERS
from loadspec.strategies.synthetic import hf_linears

__all__ = ["fused_per_tensor_groups", "near_midpoint_scale", "near_midpoint_scales"]

PAST_MIDPOINT = 2.0 ** -13
"""How far past the rounding midpoint (relative) a hard shard lands: below half a float16 or bfloat16 ulp."""

_FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def fused_per_tensor_groups(layout: CheckpointLayout) -> list[tuple[str, ...]]:
    """The checkpoint projections (HF names, without ``.weight``) of each fused per-tensor FP8 linear of
    ``layout.spec``, in shard order; MLA keeps ``q_proj`` unfused."""
    spec, groups = layout.spec, []
    for index in range(len(spec.layers)):
        linears = hf_linears(spec, index)
        for shards in _FUSED:
            names = [name for name in linears if name.rsplit(".", 1)[-1] in shards]
            if len(names) == len(shards) and all(linears[name][2] == "fp8_per_tensor" for name in names):
                groups.append(tuple(names))
    return groups


def near_midpoint_scale(largest: float, significand: int, shift: int) -> float:
    """``largest * 2^-shift * (1 + (2 * significand + 1) / 16 + 2^-13)``: exact in float32 for a power-of-two
    ``largest``; ``significand`` is an even e4m3 significand index (0, 2, 4, 6), ``shift`` >= 1."""
    if significand not in (0, 2, 4, 6) or shift < 1 or math.frexp(largest)[0] != 0.5:
        raise InvalidArgument(f"near_midpoint_scale({largest!r}, {significand!r}, {shift!r}): largest should be a "
                              f"power of two, significand one of 0, 2, 4, 6 and shift >= 1")
    return largest * 2.0 ** -shift * (1 + (2 * significand + 1) / 16 + PAST_MIDPOINT)


@st.composite
def near_midpoint_scales(draw: st.DrawFn, layout: CheckpointLayout) -> CheckpointLayout:
    """Draws ``layout`` with the ``weight_scale`` of every fused per-tensor FP8 shard replaced: one shard of each
    group (drawn) keeps the largest scale ``2^e``, the others get ``near_midpoint_scale`` values (module docstring).
    Raises ``InvalidArgument`` when the spec has no fused per-tensor FP8 linear."""
    if not isinstance(layout, CheckpointLayout):
        raise InvalidArgument(f"layout={layout!r}, but should be a CheckpointLayout")
    groups = fused_per_tensor_groups(layout)
    if not groups:
        raise InvalidArgument("the layout's spec has no fused per-tensor FP8 linear, so no shard is re-quantized")
    shape = PRODUCERS[layout.producer].scale_shape
    replaced = []
    for group in groups:
        largest = 2.0 ** draw(st.integers(-6, 2), label=f"{group[0]}: largest scale exponent")
        kept = draw(st.sampled_from(group), label=f"{group[0]}: shard keeping the largest scale")
        for name in group:
            value = largest if name == kept else near_midpoint_scale(
                largest, draw(st.sampled_from((0, 2, 4, 6)), label=f"{name}: significand below the midpoint"),
                draw(st.integers(1, 3), label=f"{name}: scale shift"))
            replaced.append((f"{name}.weight_scale", shape, (value,) * math.prod(shape)))
    return replace(layout, replaced=(*layout.replaced, *replaced))
