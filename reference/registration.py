"""Putting parameters and plain attributes on a ``torch.nn.Module`` on the reload's hot path.

``Module.register_parameter``, ``Module.__setattr__`` and a ``hasattr`` that misses (``Module.__getattr__`` raising
``AttributeError``) cost 2-5 us each; a reload of 1,059 small tensors makes about 2,000 such calls, a fifth of its
per-tensor budget (issue 12). These helpers take the direct path only where it is what torch's own would do, and
fall back to torch's otherwise, so the module ends in the same state either way.
"""

from __future__ import annotations

import torch
import torch.nn.modules.module as _module_hooks


def put_parameter(module: torch.nn.Module, name: str, param: torch.nn.Parameter) -> None:
    """``module.register_parameter(name, param)``; directly into ``_parameters`` when ``param``'s class is a Parameter
    class (a type check: ``isinstance`` runs Parameter's Python-level ``__instancecheck__``), the name holds nothing
    else on the module or its class, and no global registration hook is installed."""
    if (not issubclass(type(param), torch.nn.Parameter) or not name or "." in name or _taken(module, name)
            or _module_hooks._global_parameter_registration_hooks):
        module.register_parameter(name, param)  # torch's checks, errors and hooks
        return
    module._parameters[name] = param


def _registered_or_class(module: torch.nn.Module, name: str) -> bool:
    """Whether ``name`` is a buffer or submodule of ``module`` or an attribute of its class."""
    return name in module._buffers or name in module._modules or hasattr(type(module), name)


def _taken(module: torch.nn.Module, name: str) -> bool:
    return name in module.__dict__ or _registered_or_class(module, name)


def has_parameter_or_attribute(module: torch.nn.Module, name: str) -> bool:
    """``hasattr(module, name)`` for a parameter, buffer, submodule or instance attribute, without the slow miss."""
    return name in module._parameters or _taken(module, name)


def module_attribute(module: torch.nn.Module, name: str, default: object = None) -> object:
    """``getattr(module, name, default)``, looked up only where ``has_parameter_or_attribute`` finds the name."""
    return getattr(module, name) if has_parameter_or_attribute(module, name) else default


def set_plain(module: torch.nn.Module, name: str, value: object) -> None:
    """``setattr(module, name, value)`` for a non-tensor, non-module value under a name that is no parameter,
    buffer or submodule (a host mirror): what ``Module.__setattr__`` ends in, without its checks."""
    if (isinstance(value, (torch.Tensor, torch.nn.Module)) or name in module._parameters
            or _registered_or_class(module, name)):
        setattr(module, name, value)
        return
    module.__dict__[name] = value


def registered_tensor(module: torch.nn.Module, name: str) -> torch.Tensor:
    """``getattr(module, name)`` for a registered parameter or buffer, read from torch's registries without
    ``Module.__getattr__``; any other name through ``getattr``."""
    found: torch.Tensor | None = module._parameters.get(name)
    if found is None:
        found = module._buffers.get(name)
    if found is None:
        found = getattr(module, name)
    return found
