"""What the adapters share: the walks that read a model back, the canonical export, the processing-order
bookkeeping and the FP8 stand-in arithmetic.

Engine-free (torch and loadspec's vocabulary only): each adapter passes its own classes and
its engine's quirks in, so this module may be imported before or after an engine.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from loadspec.reference.vocabulary import CPU_MIRRORS, FLOAT_MIRRORS, FP8_DTYPE, FP8_MAX, OUTPUT_BUFFERS, SCALE_NAMES


# ------------------------------------------------------------------------ attention layers
def scale_parameters(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The layer's ``q/k/v/prob_scale`` parameters that exist."""
    return {name: getattr(layer, name) for name in SCALE_NAMES if name in layer._parameters}


def output_buffers(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The processed scales (``_q_scale`` ...) by scale name."""
    return {name: getattr(layer, buffer) for name, buffer in OUTPUT_BUFFERS.items()}


def vocabulary_mirrors(layer: torch.nn.Module) -> dict[str, float]:
    """Every host mirror the vocabulary names (``_k_scale_float`` ..., ``_k_scale_cpu`` ...), as floats."""
    return {attribute: float(getattr(layer, attribute))
            for attribute in (*FLOAT_MIRRORS.values(), *CPU_MIRRORS.values())}


# ------------------------------------------------------------------------------- models
def kernel_tensors(model: torch.nn.Module, *, remove_duplicate: bool = True,
                   dotted_root: bool = False) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name; ``remove_duplicate=False`` lists tied modules under each name.

    A tensor of ``model`` itself is named ``name``, or ``.name`` with ``dotted_root`` (the reference's names).
    """
    tensors = {}
    for module_name, module in model.named_modules(remove_duplicate=remove_duplicate):
        for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is not None:
                tensors[f"{module_name}.{name}" if module_name or dotted_root else name] = tensor
    return tensors


def host_mirrors(model: torch.nn.Module, attention: type | tuple[type, ...],
                 mirrors: Callable[[Any], dict[str, float]]) -> dict[str, float]:
    """``mirrors(layer)`` of every ``attention`` layer, keyed ``<layer name>.<attribute>``."""
    return {f"{module_name}.{attribute}": value
            for module_name, module in model.named_modules() if isinstance(module, attention)
            for attribute, value in mirrors(module).items()}


# ------------------------------------------------------------------------------- export
def cpu(tensor: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy."""
    return tensor.detach().to("cpu", copy=True)


def buffer_scales(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``q/k/v/prob_scale`` from the processed buffers, as 0-d float32 copies."""
    return {scale: cpu(getattr(layer, OUTPUT_BUFFERS[scale])).reshape(()).float() for scale in SCALE_NAMES}


def head_buffer_scales(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Per-head (``attn_head``) processed buffers: ``q/k/v_scale`` flat ``(num_kv_heads,)``, ``prob_scale`` 0-d,
    float32 copies, as the reference exports them [HEADS-1, LOAD-17]."""
    scales = {scale: cpu(getattr(layer, OUTPUT_BUFFERS[scale])).reshape(-1).float() for scale in SCALE_NAMES}
    scales["prob_scale"] = scales["prob_scale"].reshape(())
    return scales


@dataclass(frozen=True)
class ExportLayout:
    """An engine's module classes and FP8 quirks, for ``export_kernel_state``."""

    attention: type[Any]
    attention_scales: Callable[[Any], dict[str, torch.Tensor]]
    linear: type[Any]
    transposed: Callable[[Any, torch.Tensor], bool]
    """Whether a linear's FP8 weight is held as an ``(in, out)`` view, to be exported transposed."""
    input_scale: Callable[[Any], torch.Tensor | None]
    """A linear's static activation scale (one value), or None."""
    embedding: type[Any]
    norm: type[Any]
    remove_duplicate: bool = True


def export_linear(name: str, module: Any, state: dict[str, torch.Tensor], layout: ExportLayout) -> None:
    """The weight as ``[out, in]``; FP8: ``weight_scale`` per tensor ``()`` else flat, and any ``input_scale``."""
    weight = module.weight
    if weight.dtype == FP8_DTYPE:
        if layout.transposed(module, weight):
            weight = weight.t()
        scale = module.weight_scale
        state[f"{name}.weight_scale"] = cpu(scale.reshape(()) if scale.numel() == 1 else scale.reshape(-1)).float()
        input_scale = layout.input_scale(module)
        if input_scale is not None:
            state[f"{name}.input_scale"] = cpu(input_scale).reshape(()).float()
    state[f"{name}.weight"] = cpu(weight).contiguous()


def export_kernel_state(model: torch.nn.Module, layout: ExportLayout) -> dict[str, torch.Tensor]:
    """The kernel tensors in canonical names: attention scales, linears, embeddings cut to the vocabulary, norms."""
    state: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules(remove_duplicate=layout.remove_duplicate):
        if isinstance(module, layout.attention):
            state.update({f"{name}.{scale}": tensor for scale, tensor in layout.attention_scales(module).items()})
        elif isinstance(module, layout.linear):
            export_linear(name, module, state, layout)
        elif isinstance(module, layout.embedding):
            state[f"{name}.weight"] = cpu(module.weight[: module.org_vocab_size]).contiguous()
        elif isinstance(module, layout.norm):
            state[f"{name}.weight"] = cpu(module.weight)
    return state


# --------------------------------------------------------------------- processing order
class ProcessingOrder:
    """Each watched module's model (held weakly) and name, for the processing-order recorders [ORDER-1..4]."""

    def __init__(self) -> None:
        self._owners: weakref.WeakKeyDictionary[torch.nn.Module, tuple[weakref.ref, str]] = \
            weakref.WeakKeyDictionary()

    def watch(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """Empty ``model.loadspec_events`` and name every module of ``model``; returns them, to wrap their hooks."""
        ref = weakref.ref(model)
        model.loadspec_events = []  # type: ignore[assignment]  # what record appends to
        modules = list(model.named_modules())
        for name, module in modules:
            self._owners[module] = (ref, name)
        return modules

    def record(self, layer: torch.nn.Module) -> None:
        """Append ``layer``'s name to its live model's ``loadspec_events``; a module of no watched model: nothing."""
        owner = self._owners.get(layer)
        if owner is None:
            return
        model = owner[0]()
        if model is not None and getattr(model, "loadspec_events", None) is not None:
            model.loadspec_events.append(owner[1])


# ------------------------------------------------------------------------- FP8 stand-ins
def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x / scale`` in float32, clamped to +-FP8_MAX, cast to FP8 (what both engines' stand-ins compute)."""
    return (x.to(torch.float32) / scale.to(torch.float32)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


__all__ = ["scale_parameters", "output_buffers", "vocabulary_mirrors", "kernel_tensors", "host_mirrors", "cpu",
           "buffer_scales", "head_buffer_scales",
           "ExportLayout", "export_linear", "export_kernel_state", "ProcessingOrder", "quantize_fp8"]
