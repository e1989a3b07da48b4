"""What SGLang 0.5.23 needs to build and process layers on one CPU rank, and what the adapter installs into it.

Facts from ``shared/notes/sglang-on-cpu.md`` (sections 3 and 4); the code is the adapter's own.

* ``install_torchvision_shim``: empty modules for ``torchvision._meta_registrations`` and
  ``torchvision._autograd_registrations``, before SGLang is imported. The only torchvision on
  the index is a CUDA build whose C++ ops cannot load beside a CPU torch, and registering
  fake kernels for them fails (``operator torchvision::nms does not exist``); SGLang imports
  only torchvision's pure-Python transforms (``multimodal/internvl_utils.py``).
* ``rope_placeholder``: while a model is built, ``vllm._custom_ops.rotary_embedding`` is a
  placeholder that raises if called. ``RotaryEmbedding.__init__`` imports that "fallback
  kernel" on a device that is none of SGLang's (``rotary_embedding/base.py``); only a forward
  would call it, and the suite runs none through SGLang.
* ``install_fp8_standin``: ``scaled_fp8_quant`` (``kernels/ops/quantization/fp8_kernel.py``)
  calls sgl_kernel's CUDA ops on non-HIP builds; the stand-in is pure torch with the
  arithmetic of SGLang's own HIP fallbacks (static: ``x / scale``, clamp to +-448, cast to
  e4m3fn; dynamic per tensor: scale ``amax / 448``). It replaces the name in every module that
  imported it.
* ``install_capability_standin``: ``_check_scheme_supported`` of ``CompressedTensorsConfig`` and
  ``QuarkConfig`` asks the GPU's compute capability, which a CPU torch cannot answer ("Torch not
  compiled with CUDA enabled"; ``(None, None)`` for Quark); the stand-in answers as a GPU meeting
  the scheme's minimum does, so FP8 linears get the scheme they get there (``*W8A8Fp8``).
* ``SglangRuntime``: a one-rank gloo group, a published ``ServerArgs(device="cpu")`` and the
  model-parallel groups, as ``sglang.test.layer_ut_utils.init_single_process_dist`` sets them up.
* The processing-order recorder [ORDER-1..4]: a per-instance wrapper of each quant method's
  ``process_weights_after_loading`` that records the module's name, then calls the original.
"""

from __future__ import annotations

import os
import sys
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SGLANG_LOGGING_LEVEL", "WARNING")


def install_torchvision_shim() -> None:
    """Blank torchvision's fake-kernel registrations (they need its CUDA ``_C``), before SGLang imports it."""
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(name, types.ModuleType(name))


install_torchvision_shim()

import contextlib  # noqa: E402
import functools  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

with warnings.catch_warnings():  # "Only CUDA, HIP and XPU support AWQ currently." and the like
    warnings.simplefilter("ignore")
    import sglang  # noqa: E402
    from sglang.kernels.ops.quantization import fp8_kernel  # noqa: E402
    from sglang.srt.distributed.parallel_state import (  # noqa: E402
        init_distributed_environment,
        initialize_model_parallel,
        model_parallel_is_initialized,
    )
    from sglang.srt.layers.quantization.base_config import QuantizeMethodBase  # noqa: E402
    from sglang.srt.layers.quantization.compressed_tensors.compressed_tensors import (  # noqa: E402
        CompressedTensorsConfig,
    )
    from sglang.srt.layers.quantization.quark.quark import QuarkConfig  # noqa: E402
    from sglang.srt.runtime_context import SpawnRanks, publish, reset_context  # noqa: E402
    from sglang.srt.server_args import ServerArgs  # noqa: E402

from loadspec.conformance.adapters.glue import ProcessingOrder, quantize_fp8  # noqa: E402
from loadspec.reference.vocabulary import FP8_MAX  # noqa: E402

for _name in ("sglang", "sglang.srt"):  # SGLang logs every ignored model module and missing parameter at WARNING
    logging.getLogger(_name).setLevel(logging.ERROR)


# ----------------------------------------------------------------------------- RoPE placeholder
@contextlib.contextmanager
def rope_placeholder():
    """``vllm._custom_ops.rotary_embedding`` exists while the block runs (a placeholder that raises if called)."""
    if "vllm" in sys.modules:  # a real (or another) vllm: leave it alone
        yield
        return
    package, ops = types.ModuleType("vllm"), types.ModuleType("vllm._custom_ops")

    def rotary_embedding(*args, **kwargs):
        raise RuntimeError("loadspec's RoPE placeholder: SGLang's CPU fallback rotary kernel is not available "
                           "(no forward runs through SGLang in the suite)")

    ops.rotary_embedding = rotary_embedding
    package._custom_ops = ops
    sys.modules["vllm"], sys.modules["vllm._custom_ops"] = package, ops
    try:
        yield
    finally:
        sys.modules.pop("vllm", None)
        sys.modules.pop("vllm._custom_ops", None)


# ----------------------------------------------------------------------------- FP8 stand-in
def scaled_fp8_quant(input, scale=None, num_token_padding=None, use_per_token_if_dynamic=False):
    """Pure-torch ``scaled_fp8_quant``: static per tensor, dynamic per tensor or per token (no padding)."""
    if num_token_padding:
        raise NotImplementedError("loadspec's scaled_fp8_quant stand-in does not pad tokens")
    x = input.to(torch.float32)
    if scale is None:
        amax = x.abs().amax(dim=-1, keepdim=True) if use_per_token_if_dynamic else x.abs().amax().reshape(1)
        scale = amax.clamp(min=1e-12) / FP8_MAX
    elif scale.numel() != 1:
        raise ValueError(f"Expected scalar scale, got numel={scale.numel()}")
    return quantize_fp8(x, scale), scale


scaled_fp8_quant.loadspec_standin = True  # type: ignore[attr-defined]


def install_fp8_standin() -> list[str]:
    """The stand-in in place of ``fp8_kernel.scaled_fp8_quant``, there and in every loaded module importing it."""
    original = getattr(fp8_kernel.scaled_fp8_quant, "__wrapped__", fp8_kernel.scaled_fp8_quant)
    fp8_kernel.scaled_fp8_quant = scaled_fp8_quant  # type: ignore[attr-defined]  # later imports take it
    replaced = []
    for name, module in list(sys.modules.items()):
        if name.startswith("sglang") and getattr(module, "scaled_fp8_quant", None) is original:
            module.scaled_fp8_quant = scaled_fp8_quant  # type: ignore[attr-defined]
            replaced.append(name)
    scaled_fp8_quant.__wrapped__ = original  # type: ignore[attr-defined]
    return replaced


# ----------------------------------------------------------------------------- GPU capability stand-in
def install_capability_standin() -> None:
    """``_check_scheme_supported`` of the compressed-tensors and Quark configs answers True (a capable GPU)."""
    for config_class in (CompressedTensorsConfig, QuarkConfig):
        original = config_class._check_scheme_supported
        if getattr(original, "loadspec_standin", False):
            continue

        def _check_scheme_supported(self, min_capability: int, error: bool = True, **kwargs) -> bool:
            return True

        _check_scheme_supported.loadspec_standin = True  # type: ignore[attr-defined]
        _check_scheme_supported.__wrapped__ = original  # type: ignore[attr-defined]
        config_class._check_scheme_supported = _check_scheme_supported


# ----------------------------------------------------------------------------- processing order
_ORDER = ProcessingOrder()
_LOCK = threading.Lock()


def _wrap_quant_method(method: QuantizeMethodBase) -> None:
    original = method.process_weights_after_loading

    def process_weights_after_loading(layer, *args, **kwargs):
        _ORDER.record(layer)
        return original(layer, *args, **kwargs)

    method.process_weights_after_loading = process_weights_after_loading
    method.loadspec_recorder = True


def watch_processing(model: torch.nn.Module) -> None:
    """Name every module of ``model`` for the recorder and wrap its quant method's processing (record, then call)."""
    with _LOCK:
        for _, module in _ORDER.watch(model):
            method = getattr(module, "quant_method", None)
            if isinstance(method, QuantizeMethodBase) and not getattr(method, "loadspec_recorder", False):
                _wrap_quant_method(method)


# ----------------------------------------------------------------------------- runtime
class SglangRuntime:
    """The one-rank process group and published ``ServerArgs`` SGLang's layers read, set up once per process."""

    def __init__(self) -> None:
        if not model_parallel_is_initialized():
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            reset_context()
            self.server_args = ServerArgs(model_path="dummy", tp_size=1, ep_size=1, pp_size=1, device="cpu")
            publish(self.server_args, role="test", ranks=SpawnRanks(world_rank=0))
            init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                         distributed_init_method=f"tcp://127.0.0.1:{port}")
            initialize_model_parallel(backend="gloo")
        self.standin_modules = install_fp8_standin()
        install_capability_standin()


@functools.cache
def runtime() -> SglangRuntime:
    """The process's ``SglangRuntime``, set up on first use."""
    return SglangRuntime()


__all__ = ["SglangRuntime", "runtime", "rope_placeholder", "install_fp8_standin", "install_torchvision_shim",
           "scaled_fp8_quant", "install_capability_standin", "watch_processing", "sglang"]
