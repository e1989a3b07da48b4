"""Per-head KV-cache scale checkpoints: compressed-tensors ``kv_cache_scheme.strategy: attn_head`` [HEADS-1..7].

llm-compressor (compressed-tensors 0.12) writes per-head scales under the compressed-tensors names
(``self_attn.{q,k,v}_scale``, NAMES-1), shaped ``(num_kv_heads, 1, 1)`` for k and v and
``(num_heads, 1, 1)`` for q, in the model's dtype. ``head_checkpoint(layout, values)`` is a
compressed-tensors ``CheckpointLayout`` (drawn without per-tensor KV scales) plus those tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from loadspec.reference.spec import ModelSpec
from loadspec.strategies._validation import check_choices
from loadspec.strategies.layouts import (
    HEAD_KINDS,
    SCALE_DTYPE_NAMES,
    CheckpointLayout,
    HeadValues,
    head_scale_name,
    head_scale_tensors,
)

__all__ = ["HEAD_KINDS", "HEAD_SCALE_VALUES", "HeadValues", "as_per_head", "head_counts", "head_scale_name",
           "head_scale_sets", "head_scale_tensors", "head_checkpoint"]

HEAD_SCALE_VALUES = tuple(sorted({2.0**e * (1 + m / 8) for e in range(-8, 5) for m in range(8)}))
"""Positive scales exact in float32, bfloat16 and float16 alike (3 mantissa bits, exponents -8..4), so a
per-head value means the same in any dtype a producer writes it in."""


def as_per_head(spec: ModelSpec) -> ModelSpec:
    """``spec`` as a compressed-tensors ``attn_head`` model; ``InvalidArgument`` for MLA (no KV heads)."""
    if not isinstance(spec, ModelSpec):
        raise InvalidArgument(f"graph={spec!r}, but should be a ModelSpec")
    if spec.attention != "mha":
        raise InvalidArgument(f"attention={spec.attention!r}: per-head KV-cache scales need MHA/GQA attention")
    return spec.with_(quant_method="compressed-tensors", kv_scale_strategy="attn_head")


def head_counts(spec: ModelSpec) -> dict[str, int]:
    """Kind -> heads of its per-head scale: q ``num_heads``, k and v ``num_kv_heads``."""
    return {"q": spec.num_heads, "k": spec.num_kv_heads, "v": spec.num_kv_heads}


@st.composite
def head_scale_sets(draw: st.DrawFn, spec: ModelSpec, *, required: Iterable[str] = HEAD_KINDS,
                    optional: Iterable[str] = ()) -> HeadValues:
    """Draws per-head values for every layer of ``spec``: the ``required`` kinds always, each ``optional`` kind
    or not (per layer), values from ``HEAD_SCALE_VALUES``. Bad arguments raise ``InvalidArgument``."""
    required = check_choices("required", required, HEAD_KINDS, allow_empty=True)
    optional = check_choices("optional", optional, HEAD_KINDS, allow_empty=True)
    counts = head_counts(spec)
    out: HeadValues = {}
    for index in range(len(spec.layers)):
        kinds = [k for k in HEAD_KINDS if k in required or (k in optional and draw(st.booleans(), label=f"{k}?"))]
        out[index] = {kind: tuple(draw(st.lists(st.sampled_from(HEAD_SCALE_VALUES), min_size=counts[kind],
                                                max_size=counts[kind]), label=f"layer {index} {kind} per head"))
                      for kind in kinds}
    return out


def head_checkpoint(layout: CheckpointLayout, values: HeadValues, *,
                    dtype: torch.dtype | None = None) -> list[tuple[str, torch.Tensor]]:
    """``layout``'s tensors with every KV-cache scale replaced by the per-head ones of ``values`` (in ``dtype``,
    default the model's): ``replace(layout, head_scales=values).tensors()``, so the layout alone, as a reproducer
    writes it, rebuilds the checkpoint [HEADS-1]. ``ValueError`` unless ``layout`` is compressed-tensors'."""
    if dtype is not None:
        layout = replace(layout, scale_dtype={v: k for k, v in SCALE_DTYPE_NAMES.items()}[dtype])
    return replace(layout, head_scales=values).tensors()
