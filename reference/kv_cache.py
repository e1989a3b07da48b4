"""The KV-cache method: creates sentinel scale parameters and resolves them after loading."""

from __future__ import annotations

import math
import warnings

import torch

from loadspec.reference.errors import ScaleValueError
from loadspec.reference.scales import KVCacheScaleParameter
from loadspec.reference.vocabulary import (
    CPU_MIRRORS,
    FLOAT_MIRRORS,
    OUTPUT_BUFFERS,
    PER_TOKEN_HEAD_KV_DTYPES,
    SCALE_NAMES,
    SENTINEL,
    UNQUANTIZED_KV_DTYPES,
)


class MissingKVScalesWarning(UserWarning):
    """Neither k_scale nor v_scale was loaded; 1.0 is used [KVPROC-3]."""


__all__ = ["KVCacheMethod", "MissingKVScalesWarning", "set_default_scales", "reset_default_scales", "write_outputs",
           "output_scales", "OUTPUT_BUFFERS", "FLOAT_MIRRORS", "CPU_MIRRORS"]


def set_default_scales(layer: torch.nn.Module, *, device: torch.device | str | None = None) -> None:
    """Give an attention layer its output scales at 1.0: device buffers and host mirrors [KVPROC-11]."""
    for buffer in OUTPUT_BUFFERS.values():
        layer.register_buffer(buffer, torch.ones((), dtype=torch.float32, device=device), persistent=True)
    for mirror in FLOAT_MIRRORS.values():
        setattr(layer, mirror, 1.0)
    for mirror in CPU_MIRRORS.values():
        setattr(layer, mirror, torch.ones((), dtype=torch.float32))


def reset_default_scales(layer: torch.nn.Module) -> None:
    """Write 1.0 into every output scale and mirror in place (same tensor objects) [KVPROC-11, KVPROC-13]."""
    write_outputs(layer, {name: 1.0 for name in SCALE_NAMES})


def write_outputs(layer: torch.nn.Module, values: dict[str, float]) -> None:
    """Write resolved scales into the device buffers and all host mirrors, in place [KVPROC-11, KVPROC-13]."""
    for name, value in values.items():
        getattr(layer, OUTPUT_BUFFERS[name]).fill_(value)
        setattr(layer, FLOAT_MIRRORS[name], float(torch.tensor(value, dtype=torch.float32)))
        if name in CPU_MIRRORS:
            getattr(layer, CPU_MIRRORS[name]).fill_(value)


def output_scales(layer: torch.nn.Module) -> dict[str, float]:
    """The device output scales of an attention layer as Python floats."""
    return {name: float(getattr(layer, buffer)) for name, buffer in OUTPUT_BUFFERS.items()}


class KVCacheMethod:
    """Per-tensor KV-cache scales for one attention layer [KVPROC-1..13]."""

    loads_weights = True

    def __init__(self, kv_cache_dtype: str) -> None:
        self.kv_cache_dtype = kv_cache_dtype

    def create_weights(self, layer: torch.nn.Module, *, device: torch.device | str | None = None) -> None:
        """Give ``layer`` four fresh sentinel scale parameters [KVPROC-1, SCALE-1]."""
        for name in SCALE_NAMES:
            if hasattr(layer, name):
                delattr(layer, name)
            layer.register_parameter(name, KVCacheScaleParameter(device=device))

    def resolve(self, layer: torch.nn.Module) -> dict[str, float]:
        """The output scales the loaded parameters call for; raises on bad values [KVPROC-2..9]."""
        loaded = {name: float(getattr(layer, name)) for name in SCALE_NAMES}
        where = getattr(layer, "loadspec_name", type(layer).__name__)
        for name, value in loaded.items():
            if value == SENTINEL:
                continue
            if math.isnan(value) or math.isinf(value) or value <= 0.0:
                raise ScaleValueError(
                    f"{where}.{name}={value!r}: a KV-cache scale must be finite and positive "
                    f"(-1.0 marks an unloaded scale) [KVPROC-7]"
                )
        present = {name: value for name, value in loaded.items() if value != SENTINEL}
        dtype = self.kv_cache_dtype
        if dtype in PER_TOKEN_HEAD_KV_DTYPES:
            return {"k_scale": 1.0, "v_scale": 1.0}
        resolved = {"q_scale": present.get("q_scale", 1.0), "prob_scale": present.get("prob_scale", 1.0)}
        if dtype in UNQUANTIZED_KV_DTYPES:
            return resolved
        k, v = present.get("k_scale"), present.get("v_scale")
        if k is None:
            if v is None:
                if "e5m2" not in dtype:
                    warnings.warn(
                        f"{where}: the checkpoint has no k_scale or v_scale; using KV-cache scale 1.0 for "
                        f"{dtype} [KVPROC-3]", MissingKVScalesWarning, stacklevel=3)
                k = v = 1.0
            else:
                k = v
        elif v is None:
            v = k
        resolved.update(k_scale=k, v_scale=v)
        return resolved

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Resolve sentinels into the output scales, then delete the scale parameters [KVPROC-2..13]."""
        if not hasattr(layer, "q_scale"):
            return  # already processed [KVPROC-12]
        values = self.resolve(layer)  # raises before anything is written [KVPROC-7]
        write_outputs(layer, values)
        for name in SCALE_NAMES:
            delattr(layer, name)
