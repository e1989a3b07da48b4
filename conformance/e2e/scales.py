"""Every scale of a checkpoint as an engine must hold it after loading, to compare with an exported kernel state.

A loader that silently falls back to 1.0 for a KV scale can still score a low perplexity on a
small model (docs/E2E.md), so the E2E run compares every k/v scale, every linear
``weight_scale`` and every static ``input_scale`` of the file with the exported one [E2E-1].
The file's values go through the transform vLLM 0.33.0 documents for each (the reference
applies the same):

* q scales (per-tensor checkpoints that write one, e.g. ModelOpt FP8 attention's ``q_proj.q_scale``, Quark's
  ``q_proj.output_scale``): read as float32 [KVPROC-2];
* k/v scales: read as float32 (a bf16/fp16 scale is widened exactly); a layer with only k
  (or only v, or the legacy single ``kv_scale``) uses it for both [KVPROC-4]; ``attn_head``
  scales keep one value per KV head [HEADS-1];
* per-tensor FP8 weights: fused shards (q/k/v, gate/up) are re-quantized to the largest
  shard's scale (``fp8_utils.requantize_with_max_scale``), so the kernel's scale is the max;
* per-channel FP8 weights: the shards' rows concatenated, flat ``(out,)``;
* static ``input_scale``: the largest shard's, 0-d (``input_scale.max()`` in
  ``Fp8LinearMethod``/``CompressedTensorsW8A8Fp8.process_weights_after_loading``) [STATIC-2].
"""

from __future__ import annotations

from pathlib import Path

import torch

from loadspec.conformance.e2e.forward import FUSED_PROJS, linear_name
from loadspec.reference.checkpoint import open_checkpoint
from loadspec.reference.spec import ModelSpec


def hf_projection(index: int, projection: str) -> str:
    """HF name of an unfused projection of layer ``index``, e.g. ``model.layers.0.self_attn.q_proj``."""
    block = "mlp" if projection in FUSED_PROJS["mlp.gate_up_proj"] + FUSED_PROJS["mlp.down_proj"] else "self_attn"
    return f"model.layers.{index}.{block}.{projection}"


def _tensor(value: float | tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


def expected_scales(path: str | Path, spec: ModelSpec, kv_scales, q_scales=()) -> dict[str, torch.Tensor]:
    """Kernel-state name -> the float32 value a correct loader exports, from checkpoint ``path``.

    ``kv_scales`` is ``CheckpointInfo.kv_scales`` (per layer ``(k, v)``, already resolved by the
    cache-scale mapper), ``q_scales`` its ``q_scales`` (``None``: the file has none for that layer).
    Linear scales are read from the HF-named (unfused) tensors; a linear whose scales are not all
    present is not compared.
    """
    out: dict[str, torch.Tensor] = {}
    for index, (k, v) in enumerate(kv_scales):
        out[spec.attention_prefix(index) + "k_scale"] = _tensor(k)
        out[spec.attention_prefix(index) + "v_scale"] = _tensor(v)
    for index, q in enumerate(q_scales):
        if q is not None:
            out[spec.attention_prefix(index) + "q_scale"] = _tensor(q)
    checkpoint = open_checkpoint(path)
    headers = checkpoint.tensors
    for index, layer in enumerate(spec.layers):
        quants = layer.linear_quants()
        for fused, projections in FUSED_PROJS.items():
            quant = quants[fused.split(".", 1)[1]]
            if quant == "none":
                continue
            kernel = linear_name(spec, index, fused)
            names = [hf_projection(index, p) for p in projections]
            weight_scales = [f"{n}.weight_scale" for n in names]
            if all(n in headers for n in weight_scales):
                values = [checkpoint.read(n).float().reshape(-1) for n in weight_scales]
                out[f"{kernel}.weight_scale"] = (torch.cat(values) if quant == "fp8_per_channel"
                                                 else torch.stack([v.reshape(()) for v in values]).max())
            input_scales = [f"{n}.input_scale" for n in names]
            if spec_static_inputs(spec) and all(n in headers for n in input_scales):
                out[f"{kernel}.input_scale"] = torch.stack(
                    [checkpoint.read(n).float().reshape(()) for n in input_scales]).max()
    return out


def spec_static_inputs(spec: ModelSpec) -> bool:
    """Whether ``spec``'s FP8 linears take static input scales [STATIC-1] (False where the reference predates them)."""
    return bool(getattr(spec, "static_input_scales", False))


def scale_mismatches(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[tuple[str, str, str]]:
    """``(name, exported, file's)`` for every expected scale the exported ``state`` lacks or holds another value of."""
    out = []
    for name, want in expected.items():
        got = state.get(name)
        if got is None:
            out.append((name, "absent", _show(want)))
        elif got.numel() != want.numel() or not torch.equal(got.detach().cpu().float().reshape(-1), want.reshape(-1)):
            out.append((name, _show(got), _show(want)))
    return out


def _show(tensor: torch.Tensor) -> str:
    values = tensor.detach().cpu().float().reshape(-1).tolist()
    return f"{values[0]:.6g}" if len(values) == 1 else "[" + ", ".join(f"{v:.6g}" for v in values[:4]) + (
        ", ...]" if len(values) > 4 else "]")


__all__ = ["expected_scales", "scale_mismatches", "hf_projection", "spec_static_inputs"]
