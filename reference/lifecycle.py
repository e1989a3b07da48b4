"""The load/process lifecycle of first load and reload: which layers are processed, in what order, and the export.

Attention layers are deferred after every other layer [ORDER-1, ORDER-3], so MLA's
processing sees ``kv_b_proj``'s processed weight. ``export_kernel_state`` is the
canonical view the suite compares with the oracle.
"""

from __future__ import annotations

from typing import TypeGuard

import torch

from loadspec.reference.layers.attention import AttentionLayerBase


def is_attention(module: torch.nn.Module) -> TypeGuard[AttentionLayerBase]:
    """Whether the loader defers ``module`` after every other layer [ORDER-1, ORDER-3]."""
    return isinstance(module, AttentionLayerBase)


def process_module(module: torch.nn.Module) -> None:
    """Run a module's processing: its quant method, then an attention layer's own hook."""
    method = getattr(module, "quant_method", None)
    if method is not None:
        method.process_weights_after_loading(module)
    if is_attention(module):
        module.process_weights_after_loading()


def processing_order(model: torch.nn.Module) -> list[str]:
    """Module names in processing order: non-attention layers, then attention layers [ORDER-1, ORDER-3]."""
    named = [(name, m) for name, m in model.named_modules() if owns_tensors(m) or is_attention(m)]
    return [n for n, m in named if not is_attention(m)] + [n for n, m in named if is_attention(m)]


def owns_tensors(module: torch.nn.Module) -> bool:
    """Whether ``module`` registers parameters or buffers of its own."""
    return bool(module._parameters) or bool(module._buffers)


def process_weights_after_loading(model: torch.nn.Module) -> list[str]:
    """Process every layer after a first load, attention layers last; return the order [ORDER-2, ORDER-3]."""
    modules = dict(model.named_modules())
    order = processing_order(model)
    for name in order:
        process_module(modules[name])
    return order


def export_kernel_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The processed kernel state in canonical names, as CPU tensors (see ``docs``: canonical export)."""
    state: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        exporter = getattr(module, "export", None)
        if exporter is None and hasattr(module, "quant_method") and hasattr(module.quant_method, "export"):
            exported = module.quant_method.export(module)
        elif exporter is not None:
            exported = exporter()
        else:
            continue
        for name, tensor in exported.items():
            state[f"{module_name}.{name}"] = tensor.detach().to("cpu", copy=True)
    return state
