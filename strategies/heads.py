"""Per-head KV-cache scale checkpoints: compressed-tensors ``kv_cache_scheme.strategy: attn_head`` [HEADS-1..7].

llm-compressor (compressed-tensors 0.12) writes per-head scales under the compressed-tensors names
(``self_attn.{q,k,v}_scale``, NAMES-1), shaped ``(num_kv_heads, 1, 1)`` for k and v and
``(num_heads, 1, 1)`` for q, in the model's dtype. ``head_checkpoint(layout, values)`` is a
compressed-tensors ``CheckpointLayout`` (drawn without per-tensor KV scales) plus those tensors.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from loadspec.reference.spec import ModelSpec
from loadspec.reference.vocabulary import SCALE_KINDS, torch_dtype
from loadspec.strategies._validation import check_choices
from loadspec.strategies.layouts import CheckpointLayout
from loadspec.strategies.producers import PRODUCERS

__all__ = ["HEAD_KINDS", "HEAD_SCALE_VALUES", "HeadValues", "as_per_head", "head_counts", "head_scale_name",
           "head_scale_sets", "head_scale_tensors", "head_checkpoint"]

HEAD_KINDS = ("q", "k", "v")
"""The scale kinds written per head; ``prob`` stays per tensor."""

HEAD_SCALE_VALUES = tuple(sorted({2.0**e * (1 + m / 8) for e in range(-8, 5) for m in range(8)}))
"""Positive scales exact in float32, bfloat16 and float16 alike (3 mantissa bits, exponents -8..4), so a
per-head value means the same in any dtype a producer writes it in."""

HeadValues = dict[int, dict[str, tuple[float, ...]]]
"""Layer index -> scale kind -> one value per head (``num_heads`` for q, ``num_kv_heads`` for k and v)."""

PRODUCER = PRODUCERS["compressed-tensors"]


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


def head_scale_name(spec: ModelSpec, index: int, kind: str) -> str:
    """The checkpoint name of layer ``index``'s per-head ``kind`` scale (compressed-tensors, NAMES-1)."""
    name = PRODUCER.scale_name(f"{spec.layer_prefix(index)}{spec.container}.", kind)
    if name is None:
        raise ValueError(f"compressed-tensors writes no {kind} scale")
    return name


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


def head_scale_tensors(spec: ModelSpec, values: HeadValues, *,
                       dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The per-head scale tensors of ``values``: ``(heads, 1, 1)`` in ``dtype`` (default: the model's, as
    llm-compressor writes them)."""
    dtype = torch_dtype(spec.params_dtype) if dtype is None else dtype
    return {head_scale_name(spec, index, kind): torch.tensor(heads, dtype=dtype).reshape(-1, 1, 1)
            for index, kinds in values.items() for kind, heads in kinds.items()}


def head_checkpoint(layout: CheckpointLayout, values: HeadValues, *,
                    dtype: torch.dtype | None = None) -> list[tuple[str, torch.Tensor]]:
    """``layout``'s tensors with every KV-cache scale replaced by the per-head ones of ``values``."""
    if layout.producer != PRODUCER.id:
        raise ValueError(f"producer={layout.producer!r}: per-head scales are written by {PRODUCER.id!r}")
    scale_names = {head_scale_name(layout.spec, i, k) for i in range(len(layout.spec.layers)) for k in SCALE_KINDS
                   if PRODUCER.scale_name("", k) is not None}
    kept = [(name, tensor) for name, tensor in layout.tensors() if name not in scale_names]
    return kept + list(head_scale_tensors(layout.spec, values, dtype=dtype).items())
