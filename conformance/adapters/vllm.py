"""The vLLM adapter: vLLM's own classes and functions behind loadspec's adapter protocol.

``--impl=vllm`` runs the conformance suite against vLLM's real loader code on the
CPU (``VLLM_TARGET_DEVICE=cpu``), in the virtual environment that
``conformance/adapters/vllm_env.sh`` builds (``make setup-vllm``). Everything the
suite compares comes out of vLLM's objects: ``KVCacheScaleParameter`` and its
loader, the KV-cache methods of ``Fp8Config`` and the compressed-tensors,
ModelOpt and Quark configs, ``WeightsMapper``, ``default_weight_loader``,
``AutoWeightsLoader``, ``CopyCounter``, ``Attention`` and the parallel linear
layers, ``process_weights_after_loading`` and the layerwise reload functions.
This module is glue only: it builds vLLM's objects the way vLLM's model loader
does and translates between them and the protocol's plain tensors and names.
The model tier lives in ``vllm_model.py``.

Two things are installed into vLLM, and ``VllmAdapter.notes`` says so:

* a pure-torch stand-in for ``vllm._custom_ops.scaled_fp8_quant``, static
  per-tensor case only (the compiled ``torch.ops._C.static_scaled_fp8_quant``
  does not exist on CPU; FP8 linear processing calls it to requantize fused
  shards); every other call goes to the original;
* recorders for the processing order: a per-instance wrapper around each quant
  method's and each attention layer's ``process_weights_after_loading``, and a
  wrapper around ``reload.layerwise._layerwise_process``. Each one records the
  layer's name and then calls the original with the same arguments.

Facts behind the capability list are in ``reports/vllm-0.33.0/probe.md`` and
``reports/vllm-0.33.0/README.md``.
"""

from __future__ import annotations

import os

# Before any vLLM import: the platform is chosen at import time, and nothing may
# be fetched from a hub.
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import contextlib  # noqa: E402
import itertools  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import weakref  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import vllm  # noqa: E402

from loadspec.conformance.adapter import Weights  # noqa: E402
from loadspec.reference.spec import ModelSpec  # noqa: E402

SCALE_NAMES = ("q_scale", "k_scale", "v_scale", "prob_scale")
OUTPUT_BUFFERS = {"q_scale": "_q_scale", "k_scale": "_k_scale", "v_scale": "_v_scale", "prob_scale": "_prob_scale"}
FLOAT_MIRRORS = ("_q_scale_float", "_k_scale_float", "_v_scale_float", "_prob_scale_float")
CPU_MIRRORS = ("_k_scale_cpu", "_v_scale_cpu")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_DTYPE = "float32"

CAPABILITIES = frozenset({
    "primitives", "model", "reload_sessions", "processing_order", "fp8_per_tensor", "tied_embeddings",
    "nested_wrappers", "mixer_container", "reduced_precision_params",
})

NOTES = (
    "vLLM {version} on CPU (VLLM_TARGET_DEVICE=cpu, torch {torch}). "
    "Stand-in installed: vllm._custom_ops.scaled_fp8_quant is replaced by a pure-torch version for the static "
    "per-tensor case (x / scale, clamped to +-448, cast to float8_e4m3fn); other calls go to the original, which "
    "needs the compiled op that the CPU wheel lacks. Recorders installed (they record, then call the original): "
    "per-instance process_weights_after_loading of quant methods and Attention layers, and "
    "reload.layerwise._layerwise_process, for processing_order. "
    "Construction: one tiny Llama ModelConfig/VllmConfig per parameter dtype, a 1-rank gloo process group, "
    "layers built inside set_current_vllm_config under set_default_torch_dtype(<spec params_dtype>, default "
    "float32) and torch.device, attention prefixes made unique per process. Primitives: Attention with "
    "Fp8Config(activation_scheme='dynamic') built under float32. Models: a Llama-shaped tree of "
    "VocabParallelEmbedding/RMSNorm/QKVParallelLinear/RowParallelLinear/MergedColumnParallelLinear/Attention/"
    "ParallelLMHead; outer AutoWeightsLoader, inner AutoWeightsLoader with LlamaModel.hf_to_vllm_mapper; quant "
    "config built from a config.json dict by Fp8Config/CompressedTensorsConfig/ModelOptFp8Config/QuarkConfig."
    "from_config (unquantized linears and lm_head in its ignore list); first load = model.load_weights + "
    "DefaultModelLoader.track_weights_loading when unquantized + process_weights_after_loading; reload = "
    "reload.inplace.reload_weights; sessions = initialize_layerwise_reload / load_weights... / "
    "finalize_layerwise_reload. Not declared: mla (the CPU MLA backend rejects fp8 KV caches), "
    "per_token_head_kv (the CPU attention backend rejects per-token-head dtypes), fp8_per_channel (Fp8Config "
    "and ModelOpt FP8 cannot express it), skip_rules (AutoWeightsLoader has no skip_prefixes since #53106), "
    "cuda (the CUDA platform needs compiled ops the CPU environment lacks)."
)


# --------------------------------------------------------------------------- stand-in
def install_fp8_standin(calls: dict | None = None) -> None:
    """Replace ``vllm._custom_ops.scaled_fp8_quant`` for static per-tensor quantization (see module docstring).

    ``calls``, when given, counts ``static_per_tensor`` calls served here and ``deferred`` ones passed on.
    """
    import vllm._custom_ops as ops

    if getattr(ops.scaled_fp8_quant, "loadspec_standin", False):
        ops.scaled_fp8_quant.calls = calls if calls is not None else ops.scaled_fp8_quant.calls
        return
    original = ops.scaled_fp8_quant
    fp8 = torch.float8_e4m3fn
    limit = torch.finfo(fp8).max

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
        quantized = (input.to(torch.float32) / scale.to(torch.float32).reshape(())).clamp(-limit, limit).to(fp8)
        if output is not None:
            output.copy_(quantized)
            quantized = output
        return quantized, scale

    scaled_fp8_quant.loadspec_standin = True
    scaled_fp8_quant.calls = calls
    scaled_fp8_quant.__wrapped__ = original
    ops.scaled_fp8_quant = scaled_fp8_quant


# --------------------------------------------------------------------- processing order
_OWNERS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()
_INSIDE = threading.local()


def _record(layer: torch.nn.Module) -> None:
    owner = _OWNERS.get(layer)
    if owner is None:
        return
    model = owner[0]()
    if model is not None and getattr(model, "loadspec_events", None) is not None:
        model.loadspec_events.append(owner[1])


def _install_layerwise_recorder() -> None:
    from vllm.model_executor.model_loader.reload import layerwise

    if getattr(layerwise._layerwise_process, "loadspec_recorder", False):
        return
    original = layerwise._layerwise_process

    def _layerwise_process(layer, info):
        _record(layer)
        outer = getattr(_INSIDE, "layer", None)
        _INSIDE.layer = layer
        try:
            return original(layer, info)
        finally:
            _INSIDE.layer = outer

    _layerwise_process.loadspec_recorder = True
    _layerwise_process.__wrapped__ = original
    layerwise._layerwise_process = _layerwise_process  # looked up as a module global at call time


def watch_processing(model: torch.nn.Module) -> None:
    """Name every module of ``model`` for the recorders and wrap its processing hooks (record, then call)."""
    from vllm.model_executor.layers.attention import Attention
    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase

    ref = weakref.ref(model)
    model.loadspec_events = []
    for name, module in model.named_modules():
        _OWNERS[module] = (ref, name)
        method = getattr(module, "quant_method", None)
        if isinstance(method, QuantizeMethodBase) and not getattr(method, "loadspec_recorder", False):
            original = method.process_weights_after_loading

            def quant_hook(layer, *args, _original=original, **kwargs):
                if getattr(_INSIDE, "layer", None) is not layer:  # inside _layerwise_process: recorded there
                    _record(layer)
                return _original(layer, *args, **kwargs)

            method.process_weights_after_loading = quant_hook
            method.loadspec_recorder = True
        if isinstance(module, Attention) and "process_weights_after_loading" not in module.__dict__:
            layer_hook_original = module.process_weights_after_loading

            def layer_hook(act_dtype, _original=layer_hook_original, _layer=module):
                if getattr(_layer, "quant_method", None) is None:  # with a KV method, that method's run counts
                    _record(_layer)
                return _original(act_dtype)

            module.process_weights_after_loading = layer_hook


# ------------------------------------------------------------------------------ runtime
class VllmRuntime:
    """What vLLM needs to build layers on CPU, set up once per process: configs and a 1-rank process group."""

    def __init__(self) -> None:
        from transformers import LlamaConfig
        from vllm.config import ModelConfig, VllmConfig, set_current_vllm_config
        from vllm.config import CacheConfig
        from vllm.distributed import init_distributed_environment, initialize_model_parallel

        self._set_current = set_current_vllm_config
        self.CacheConfig = CacheConfig
        self._directory = tempfile.TemporaryDirectory(prefix="loadspec-vllm-")
        LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=128, max_position_embeddings=128
                    ).save_pretrained(self._directory.name)
        self.vllm_configs = {}
        for name in DTYPES:
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
        _install_layerwise_recorder()

    def model_config(self, dtype: str = DEFAULT_DTYPE):
        return self.vllm_configs[dtype].model_config

    def vllm_config(self, dtype: str = DEFAULT_DTYPE):
        return self.vllm_configs[dtype]

    def context(self, dtype: str = DEFAULT_DTYPE):
        """``set_current_vllm_config`` for a model of this parameter dtype."""
        return self._set_current(self.vllm_configs[dtype])

    @contextlib.contextmanager
    def building(self, dtype: str = DEFAULT_DTYPE, device: str = "cpu"):
        """Build as vLLM's ``BaseModelLoader.load_model`` does: current config, default dtype, target device."""
        from vllm.utils.torch_utils import set_default_torch_dtype

        with self.context(dtype), set_default_torch_dtype(DTYPES[dtype]), torch.device(device):
            yield

    def unique(self, name: str) -> str:
        """A layer prefix not used before in this process (``Attention`` registers it globally)."""
        return f"loadspec{next(self._ids)}.{name}"


_RUNTIME: VllmRuntime | None = None


def runtime() -> VllmRuntime:
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = VllmRuntime()
    return _RUNTIME


def primitive_quant_config(quant_method: str | None):
    """A vLLM quantization config object for ``quant_method`` (KV-cache scales only; linears dynamic FP8)."""
    from loadspec.conformance.adapters.vllm_model import quant_config_for

    return quant_config_for(quant_method, linear_schemes={}, ignored=())


# ------------------------------------------------------------------------------ adapter
class VllmAdapter:
    """vLLM's loader, layers and reload functions as an implementation under test (CPU)."""

    name = "vllm"
    capabilities = CAPABILITIES

    def __init__(self) -> None:
        self.version = vllm.__version__
        self.report_id = f"vllm-{self.version}"
        self.notes = NOTES.format(version=self.version, torch=torch.__version__)

    # ------------------------------------------------------------ primitives: SCALE
    def new_scale_parameter(self, *, device: str) -> torch.Tensor:
        from vllm.model_executor.layers.quantization.kv_cache import KVCacheScaleParameter

        with torch.device(device):
            return KVCacheScaleParameter()

    def load_scale(self, param: torch.Tensor, weight: torch.Tensor) -> None:
        param.weight_loader(param, weight)

    # ----------------------------------------------------------- primitives: KVPROC
    def make_attention(self, *, kv_cache_dtype: str, device: str):
        from vllm.model_executor.layers.attention import Attention
        from vllm.model_executor.layers.quantization.fp8 import Fp8Config

        rt = runtime()
        with rt.building(DEFAULT_DTYPE, device):
            return Attention(num_heads=2, head_size=4, scale=0.5, num_kv_heads=1,
                             cache_config=rt.CacheConfig(cache_dtype=kv_cache_dtype),
                             quant_config=Fp8Config(activation_scheme="dynamic"),
                             prefix=rt.unique("attn"))

    def attention_scale_parameters(self, layer) -> dict[str, torch.Tensor]:
        return {name: getattr(layer, name) for name in SCALE_NAMES if name in layer._parameters}

    def create_scale_weights(self, layer) -> None:
        layer.quant_method.create_weights(layer)

    def process_attention(self, layer) -> None:
        layer.quant_method.process_weights_after_loading(layer)

    def attention_outputs(self, layer) -> dict[str, torch.Tensor]:
        return {name: getattr(layer, buffer) for name, buffer in OUTPUT_BUFFERS.items()}

    def attention_mirrors(self, layer) -> dict[str, float]:
        return {attribute: float(getattr(layer, attribute)) for attribute in (*FLOAT_MIRRORS, *CPU_MIRRORS)}

    # -------------------------------------------------------------- primitives: MAP
    def make_mapper(self, *, regex=None, substr=None, stacked=None, prefix=None, suffix=None):
        import regex as re  # vLLM's WeightsMapper keys its regex stage by `regex` patterns
        from vllm.model_executor.models.utils import WeightsMapper

        return WeightsMapper(
            orig_to_new_regex={re.compile(pattern): new for pattern, new in (regex or {}).items()},
            orig_to_new_substr=dict(substr or {}), orig_to_new_stacked=dict(stacked or {}),
            orig_to_new_prefix=dict(prefix or {}), orig_to_new_suffix=dict(suffix or {}))

    def compose_mappers(self, left, right):
        return left | right

    def map_name(self, mapper, name: str):
        return mapper._map_name_with_shard(name)

    def apply_mapper(self, mapper, weights: Weights) -> list[tuple[str, torch.Tensor]]:
        return list(mapper.apply(weights))

    def cache_scale_mapper(self, quant_method: str):
        from loadspec.conformance.adapters.vllm_model import quant_config_class

        return quant_config_class(quant_method).get_cache_scale_mapper()

    # ------------------------------------------------------------- primitives: LOAD
    def default_weight_loader(self, param: torch.Tensor, weight: torch.Tensor) -> None:
        from vllm.model_executor.model_loader.weight_utils import default_weight_loader

        default_weight_loader(param, weight)

    def auto_load(self, module: torch.nn.Module, weights: Weights, *, mapper=None, quant_method=None,
                  skip_prefixes=(), skip_substrs=()) -> set[str]:
        from vllm.model_executor.models.utils import AutoWeightsLoader

        if quant_method is not None:
            runtime()
            module.quant_config = primitive_quant_config(quant_method)
        skips = {k: list(v) for k, v in (("skip_prefixes", skip_prefixes), ("skip_substrs", skip_substrs)) if v}
        return AutoWeightsLoader(module, **skips).load_weights(weights, mapper=mapper)  # skips: TypeError in 0.33

    # ------------------------------------------------------------ primitives: COUNT
    def count_copies(self, fn, *args) -> int:
        from vllm.model_executor.model_loader.reload.meta import CopyCounter

        with CopyCounter() as counter:
            fn(*args)
        return counter.copied_numel

    # -------------------------------------------------------------------- model tier
    def build_model(self, spec: ModelSpec, *, device: str):
        from loadspec.conformance.adapters import vllm_model

        return vllm_model.build(spec, device=device)

    def first_load(self, model, weights: Weights | Path) -> set[str]:
        from loadspec.conformance.adapters import vllm_model

        return vllm_model.first_load(model, weights)

    def dummy_load(self, model) -> None:
        from loadspec.conformance.adapters import vllm_model

        vllm_model.dummy_load(model)

    def reload(self, model, weights: Weights | Path) -> None:
        from loadspec.conformance.adapters import vllm_model

        vllm_model.reload(model, weights)

    def open_reload(self, model):
        from loadspec.conformance.adapters import vllm_model

        return vllm_model.ReloadSession(model)

    def count_loader_call(self, loader, param, loaded_weight) -> int:
        import inspect

        from vllm.model_executor.model_loader.reload.meta import get_numel_loaded

        counted, _ = get_numel_loaded(loader, inspect.signature(loader).bind(param, loaded_weight))
        return counted

    def export_kernel_state(self, model) -> dict[str, torch.Tensor]:
        from loadspec.conformance.adapters import vllm_model

        return vllm_model.export_kernel_state(model)

    def kernel_tensors(self, model) -> dict[str, torch.Tensor]:
        tensors = {}
        for module_name, module in model.named_modules():
            for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
                if tensor is not None:
                    tensors[f"{module_name}.{name}" if module_name else name] = tensor
        return tensors

    def host_mirrors(self, model) -> dict[str, float]:
        from vllm.model_executor.layers.attention import Attention

        return {f"{module_name}.{attribute}": value
                for module_name, module in model.named_modules() if isinstance(module, Attention)
                for attribute, value in self.attention_mirrors(module).items()}

    def processing_order(self, model) -> list[str]:
        return list(model.loadspec_events)
