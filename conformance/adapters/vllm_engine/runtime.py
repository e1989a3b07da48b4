"""What vLLM needs to build and process layers on one CPU rank, and what the adapter installs into it.

* The environment (set here, before the first vLLM import: vLLM picks its platform at import time).
* ``VllmRuntime``: one tiny Llama ``ModelConfig``/``VllmConfig`` per parameter dtype, a 1-rank gloo
  process group, and ``building()``, the context ``BaseModelLoader.load_model`` builds layers in.
* The FP8 stand-in: ``vllm._custom_ops.scaled_fp8_quant`` for static per-tensor quantization only
  (the wheel's compiled ``torch.ops._C`` is absent on CPU); every other call goes to the original.
* The GEMM guard: on hosts with AMX tiles, ``layers.utils.check_cpu_sgl_kernel`` would send bf16
  unquantized linears to ``torch.ops._C.convert_weight_packed``; with that op absent it answers
  False, so they take the ``F.linear`` fallback hosts without AMX take.
* The processing-order recorders [ORDER-1..4]: they record a layer's name, then call the original.
"""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import contextlib  # noqa: E402
import functools  # noqa: E402
import itertools  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import vllm._custom_ops as vllm_ops  # noqa: E402
from transformers import LlamaConfig  # noqa: E402
from vllm.config import CacheConfig, ModelConfig, VllmConfig, set_current_vllm_config  # noqa: E402
from vllm.distributed import init_distributed_environment, initialize_model_parallel  # noqa: E402
from vllm.model_executor.layers import utils as layer_utils  # noqa: E402
from vllm.model_executor.layers.attention import Attention  # noqa: E402
from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase  # noqa: E402
from vllm.model_executor.model_loader.reload import layerwise  # noqa: E402
from vllm.utils.torch_utils import set_default_torch_dtype  # noqa: E402

from loadspec.conformance.adapters.glue import ProcessingOrder, quantize_fp8  # noqa: E402
from loadspec.reference.vocabulary import PARAM_DTYPES, torch_dtype  # noqa: E402

DEFAULT_DTYPE = "float32"
"""The parameter dtype primitives are built under (models use their spec's ``params_dtype``)."""


def _tagged(function: Callable[..., Any], **attributes: Any) -> Callable[..., Any]:
    """``function`` with ``attributes`` set on it (markers that make each installation idempotent)."""
    for name, value in attributes.items():
        setattr(function, name, value)
    return function


# --------------------------------------------------------------------------- FP8 stand-in
def install_fp8_standin(calls: dict | None = None) -> None:
    """Replace ``vllm._custom_ops.scaled_fp8_quant`` for static per-tensor quantization (``x / scale``, clamp, cast).

    ``calls``, when given, counts ``static_per_tensor`` calls served here and ``deferred`` ones passed on.
    """
    if getattr(vllm_ops.scaled_fp8_quant, "loadspec_standin", False):
        vllm_ops.scaled_fp8_quant.calls = calls if calls is not None else vllm_ops.scaled_fp8_quant.calls
        return
    original = vllm_ops.scaled_fp8_quant

    def scaled_fp8_quant(input, scale=None, num_token_padding=None, scale_ub=None,
                         use_per_token_if_dynamic=False, output=None, group_shape=None):
        static_per_tensor = (scale is not None and scale.numel() == 1 and num_token_padding is None
                             and not use_per_token_if_dynamic and group_shape in (None, (-1, -1)))
        counter = scaled_fp8_quant.calls
        if counter is not None:
            key = "static_per_tensor" if static_per_tensor else "deferred"
            counter[key] = counter.get(key, 0) + 1
        if not static_per_tensor:
            return original(input, scale, num_token_padding, scale_ub, use_per_token_if_dynamic, output,
                            group_shape)
        quantized = quantize_fp8(input, scale.reshape(()))
        if output is not None:
            output.copy_(quantized)
            quantized = output
        return quantized, scale

    vllm_ops.scaled_fp8_quant = _tagged(scaled_fp8_quant, loadspec_standin=True, calls=calls, __wrapped__=original)


def install_gemm_guard() -> None:
    """Make ``check_cpu_sgl_kernel`` answer False while ``torch.ops._C.convert_weight_packed`` is absent (AMX hosts)."""
    if getattr(layer_utils.check_cpu_sgl_kernel, "loadspec_standin", False) \
            or hasattr(torch.ops._C, "convert_weight_packed"):
        return
    original = layer_utils.check_cpu_sgl_kernel

    def check_cpu_sgl_kernel(n: int, k: int, dtype: torch.dtype) -> bool:
        return False

    # looked up as a module global by its caller, dispatch_cpu_unquantized_gemm
    layer_utils.check_cpu_sgl_kernel = _tagged(check_cpu_sgl_kernel, loadspec_standin=True, __wrapped__=original)


# ----------------------------------------------------------------- processing order
_ORDER = ProcessingOrder()
_INSIDE = threading.local()


def install_layerwise_recorder() -> None:
    """Wrap ``reload.layerwise._layerwise_process`` (looked up as a module global at call time)."""
    if getattr(layerwise._layerwise_process, "loadspec_recorder", False):
        return
    original = layerwise._layerwise_process

    def _layerwise_process(layer, info):
        _ORDER.record(layer)
        outer = getattr(_INSIDE, "layer", None)
        _INSIDE.layer = layer
        try:
            return original(layer, info)
        finally:
            _INSIDE.layer = outer

    layerwise._layerwise_process = _tagged(_layerwise_process, loadspec_recorder=True, __wrapped__=original)


def _wrap_quant_method(method: QuantizeMethodBase) -> None:
    original = method.process_weights_after_loading

    def quant_hook(layer, *args, **kwargs):
        if getattr(_INSIDE, "layer", None) is not layer:  # inside _layerwise_process: recorded there
            _ORDER.record(layer)
        return original(layer, *args, **kwargs)

    method.process_weights_after_loading = quant_hook
    method.loadspec_recorder = True


def _wrap_attention(layer: Attention) -> None:
    original = layer.process_weights_after_loading

    def layer_hook(act_dtype):
        if getattr(layer, "quant_method", None) is None:  # with a KV method, that method's run counts
            _ORDER.record(layer)
        return original(act_dtype)

    layer.process_weights_after_loading = layer_hook


def watch_processing(model: torch.nn.Module) -> None:
    """Name every module of ``model`` for the recorders and wrap its processing hooks (record, then call)."""
    for _, module in _ORDER.watch(model):
        method = getattr(module, "quant_method", None)
        if isinstance(method, QuantizeMethodBase) and not getattr(method, "loadspec_recorder", False):
            _wrap_quant_method(method)
        if isinstance(module, Attention) and "process_weights_after_loading" not in module.__dict__:
            _wrap_attention(module)


# ------------------------------------------------------------------------------ runtime
class VllmRuntime:
    """Configs and a 1-rank process group, set up once per process, plus the stand-ins and the recorders."""

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="loadspec-vllm-")
        LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=128, max_position_embeddings=128
                    ).save_pretrained(self._directory.name)
        self.vllm_configs = {}
        for name in PARAM_DTYPES:
            model_config = ModelConfig(model=self._directory.name, skip_tokenizer_init=True, dtype=name)
            self.vllm_configs[name] = VllmConfig(model_config=model_config, cache_config=CacheConfig())
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with self.context(DEFAULT_DTYPE):
            init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                         distributed_init_method=f"tcp://127.0.0.1:{port}")
            initialize_model_parallel(1, 1)
        self._ids = itertools.count()
        install_fp8_standin()
        install_gemm_guard()
        install_layerwise_recorder()

    def model_config(self, dtype: str = DEFAULT_DTYPE) -> ModelConfig:
        return self.vllm_configs[dtype].model_config

    def vllm_config(self, dtype: str = DEFAULT_DTYPE) -> VllmConfig:
        return self.vllm_configs[dtype]

    def context(self, dtype: str = DEFAULT_DTYPE):
        """``set_current_vllm_config`` for a model of this parameter dtype."""
        return set_current_vllm_config(self.vllm_configs[dtype])

    @contextlib.contextmanager
    def building(self, dtype: str = DEFAULT_DTYPE, device: str = "cpu"):
        """Build as vLLM's ``BaseModelLoader.load_model`` does: current config, default dtype, target device."""
        with self.context(dtype), set_default_torch_dtype(torch_dtype(dtype)), torch.device(device):
            yield

    def cache_config(self, kv_cache_dtype: str) -> CacheConfig:
        return CacheConfig(cache_dtype=kv_cache_dtype)

    def unique(self, name: str) -> str:
        """A layer prefix not used before in this process (``Attention`` registers it globally)."""
        return f"loadspec{next(self._ids)}.{name}"


@functools.cache
def runtime() -> VllmRuntime:
    """The process's ``VllmRuntime``, set up on first use."""
    return VllmRuntime()


__all__ = ["DEFAULT_DTYPE", "VllmRuntime", "runtime", "install_fp8_standin", "install_gemm_guard",
           "install_layerwise_recorder", "watch_processing"]
