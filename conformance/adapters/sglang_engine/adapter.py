"""``SglangAdapter``: SGLang's own classes and functions behind loadspec's adapter protocol.

The primitives tier is here (the scale parameters ``BaseKVCacheMethod.create_weights`` makes,
``RadixAttention`` with ``Fp8Config``'s KV-cache method, ``WeightsMapper``,
``maybe_remap_kv_scale_name``, ``default_weight_loader``, ``AutoWeightsLoader``,
``CopyNumelCounter``); the model tier delegates to ``model``. ``SglangV2Adapter`` is the same
with ``SGLANG_ENABLE_WEIGHT_LOADER_V2=1`` (``LlamaForCausalLM.load_weights`` then takes the
``AutoWeightsLoader`` path, ``_load_weights_v2``).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import cast

import torch
from sglang.srt.layers.quantization import QUANTIZATION_METHODS  # noqa: I001  (after the shims)
from sglang.srt.layers.quantization.fp8 import Fp8Config
from sglang.srt.layers.quantization.kv_cache import BaseKVCacheMethod
from sglang.srt.layers.quantization.online_quantization import CopyNumelCounter
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.model_loader.weight_utils import default_weight_loader, maybe_remap_kv_scale_name
from sglang.srt.models.utils import AutoWeightsLoader, WeightsMapper

from loadspec.conformance.adapter import Weights
from loadspec.conformance.adapters import glue
from loadspec.conformance.adapters.sglang_engine import model as sglang_model
from loadspec.conformance.adapters.sglang_engine.runtime import runtime, sglang
from loadspec.reference.spec import ModelSpec
from loadspec.reference.vocabulary import SCALE_NAMES
from loadspec.strategies.capabilities import (
    FP8_PER_TENSOR,
    HOST_MIRRORS,
    MODEL,
    PRIMITIVES,
    REDUCED_PRECISION_PARAMS,
    STATIC_INPUT_SCALES,
    TIED_EMBEDDINGS,
)

V2_ENV = "SGLANG_ENABLE_WEIGHT_LOADER_V2"

CAPABILITIES = frozenset({
    PRIMITIVES, MODEL, "reload_sessions", "processing_order", FP8_PER_TENSOR, TIED_EMBEDDINGS,
    REDUCED_PRECISION_PARAMS, "skip_rules",
    # RadixAttention keeps k_scale_float/v_scale_float on the host for its backends [LOAD-18]; the configs
    # say static activations (activation_scheme / input_activations.dynamic / input_tensors) [STATIC-1]
    HOST_MIRRORS, STATIC_INPUT_SCALES,
})

NOTES = (
    "SGLang {version} on CPU (torch {torch}; sglang installed --no-deps against its torch==2.14.1 pin, which has "
    "no CPU build). Loader: {loader}. "
    "Shims installed: (1) empty modules for torchvision._meta_registrations/_autograd_registrations (the index's "
    "torchvision is a CUDA build whose ops cannot register beside a CPU torch; SGLang imports only its transforms); "
    "(2) while a model is built, a placeholder vllm._custom_ops.rotary_embedding that raises if called "
    "(RotaryEmbedding.__init__ imports that fallback kernel on an unknown device; no forward runs); (3) stand-in: "
    "sglang.kernels.ops.quantization.fp8_kernel.scaled_fp8_quant (sgl_kernel's CUDA op on non-HIP builds) is a "
    "pure-torch version (static: x / scale, clamped to +-448, cast to float8_e4m3fn; dynamic: scale amax/448), "
    "in fp8_kernel and every module that imported it; (4) stand-in: _check_scheme_supported of "
    "CompressedTensorsConfig and "
    "QuarkConfig answers True (they ask the GPU's compute capability, which a CPU torch cannot answer), so their "
    "FP8 linears get the W8A8 scheme a capable GPU gives them; (5) the producer table's Quark quantization_config gets "
    "what a Quark FP8 export also writes and SGLang's QuarkConfig reads: an empty layer_type_quant_config. "
    "Recorder installed (records, then calls the original): "
    "per-instance process_weights_after_loading of every quant method, for processing_order. "
    "Runtime: reset_context + publish(ServerArgs(device='cpu', tp/ep/pp 1)) + a 1-rank gloo group + "
    "initialize_model_parallel. Primitives: scale parameter = BaseKVCacheMethod.create_weights on a holder module "
    "(SGLang has no scale-parameter class); load_scale = the parameter's weight_loader, else default_weight_loader "
    "(SGLang's models' idiom: the scales have no weight_loader); attention = RadixAttention(2, 4, 0.5, 1) with "
    "Fp8Config(is_checkpoint_fp8_serialized=True)'s KV method (kv_cache_dtype is a server argument: the layer "
    "never sees it, so make_attention ignores it); attention_outputs = the k_scale/v_scale parameters themselves "
    "(SGLang has no _k_scale/_v_scale buffers and no q_scale/prob_scale); mirrors = k_scale_float/v_scale_float "
    "once set; make_mapper = WeightsMapper(substr, prefix, suffix) (regex and stacked entries raise "
    "NotImplementedError: SGLang's WeightsMapper has neither stage, and names carry no shard id); "
    "cache_scale_mapper(any method) = weight_utils.maybe_remap_kv_scale_name, the one remap SGLang's loaders "
    "call, given a params_dict that holds every name (its rename without its existence check); it composes with "
    "nothing (a function, not a WeightsMapper); auto_load = models.utils.AutoWeightsLoader(skip_prefixes, "
    "skip_substrs), quant_method attaches the config class's from_config result; count_copies = "
    "online_quantization.CopyNumelCounter; count_loader_call = CopyNumelCounter around one loader call (how "
    "SGLang's Quark online requantization credits loaded elements). Models: the real models.llama."
    "LlamaForCausalLM from a config.json (LlamaConfig + the producer's quantization_config, unquantized linears "
    "and lm_head ignored) via ModelConfig and loader._initialize_model under set_default_torch_dtype(spec "
    "params_dtype) and torch.device; quant config by loader._get_quantization_config for a bfloat16 ModelConfig "
    "of the same config.json (SGLang refuses float32 with FP8 methods; the suite's models are float32 by "
    "default); attention_first is ignored (LlamaAttention registers qkv_proj, o_proj, attn in that order). "
    "First load = DefaultModelLoader.load_weights_and_postprocess (directories through the loader's own "
    "iterator; returns no names: SGLang's loader returns none); dummy load = initialize_dummy_weights + "
    "post_load_weights + the processing loop of DummyModelLoader.load_model; reload of a directory = "
    "WeightUpdater.update_weights_from_disk(path, 'auto') ((False, message) raised as WeightUpdateRejected); "
    "reload of pairs and sessions = WeightUpdater.begin_weight_update / update_weights_from_tensor per load / "
    "end_weight_update(run_post_load=False). Export: q_scale and prob_scale as 1.0 (SGLang has neither: its "
    "attention applies none), k/v as the k_scale/v_scale parameters (1.0 without a KV method), FP8 weights "
    "transposed back to [out, in], embed/lm_head cut to vocab_size. Not declared: mla (not built; the adapter "
    "builds Llama), mixer_container and nested_wrappers (SGLang's loaders are per model class: Llama knows only "
    "'model.' and 'self_attn'), fp8_per_channel (Fp8Config and ModelOpt FP8 cannot express it; compressed-tensors "
    "channel schemes untried), per_token_head_kv (SGLang has no per-token-head KV dtypes; #26436 closed), cuda "
    "(no CUDA kernels in this environment), kv_scales_per_head (BaseKVCacheMethod makes 0-d scales), "
    "attention_sinks (LlamaAttention has none), tp_head_slicing (no per-head scales to slice). Host mirrors: "
    "k_scale_float/v_scale_float (SGLang keeps no q mirror it sets and no _k/_v_scale_cpu)."
)


class KVScaleRemap:
    """``maybe_remap_kv_scale_name`` as a mapper: the same function whatever the quant method."""

    class _EveryName(dict):
        def __contains__(self, name) -> bool:
            return True

    def __init__(self, quant_method: str | None) -> None:
        self.quant_method = quant_method

    def map_name(self, name: str) -> str | None:
        return maybe_remap_kv_scale_name(name, self._EveryName())

    def __repr__(self) -> str:
        return f"maybe_remap_kv_scale_name[{self.quant_method}]"


class SglangAdapter:
    """SGLang's loader, layers and ``WeightUpdater`` as an implementation under test (CPU), default loader path."""

    name = "sglang"
    capabilities = CAPABILITIES
    loader = "the default (legacy) loader path, LlamaForCausalLM._legacy_load_weights"
    v2 = False

    def __init__(self) -> None:
        if self.v2:
            os.environ[V2_ENV] = "1"
        elif os.environ.get(V2_ENV, "0") not in ("", "0", "false", "False"):
            raise RuntimeError(f"{V2_ENV} is set: run --impl=sglang-v2 for the v2 loader, or unset it")
        self.version = sglang.__version__
        self.report_id = f"sglang-{self.version}" + ("-v2" if self.v2 else "")
        self.notes = NOTES.format(version=self.version, torch=torch.__version__, loader=self.loader)
        self._ids = itertools.count()

    # ------------------------------------------------------------ primitives: SCALE
    def new_scale_parameter(self, *, device: str) -> torch.Tensor:
        holder = torch.nn.Module()
        with torch.device(device):
            BaseKVCacheMethod(Fp8Config(is_checkpoint_fp8_serialized=True)).create_weights(holder)
        return cast(torch.Tensor, holder.k_scale)

    def load_scale(self, param: torch.Tensor, weight: torch.Tensor) -> None:
        getattr(param, "weight_loader", default_weight_loader)(param, weight)

    # ----------------------------------------------------------- primitives: KVPROC
    def make_attention(self, *, kv_cache_dtype: str, device: str) -> RadixAttention:
        with torch.device(device):
            return RadixAttention(2, 4, 0.5, 1, layer_id=0, quant_config=Fp8Config(is_checkpoint_fp8_serialized=True),
                                  prefix=f"loadspec{next(self._ids)}.attn")

    def attention_scale_parameters(self, layer: RadixAttention) -> dict[str, torch.Tensor]:
        return glue.scale_parameters(layer)

    def create_scale_weights(self, layer: RadixAttention) -> None:
        layer.quant_method.create_weights(layer)

    def process_attention(self, layer: RadixAttention) -> None:
        layer.quant_method.process_weights_after_loading(layer)

    def attention_outputs(self, layer: RadixAttention) -> dict[str, torch.Tensor]:
        return {name: getattr(layer, name) for name in SCALE_NAMES if isinstance(getattr(layer, name, None),
                                                                                  torch.Tensor)}

    def attention_mirrors(self, layer: RadixAttention) -> dict[str, float]:
        return sglang_model.attention_mirrors(layer)

    # -------------------------------------------------------------- primitives: MAP
    def make_mapper(self, *, regex=None, substr=None, stacked=None, prefix=None, suffix=None) -> WeightsMapper:
        for stage, entries in (("regex", regex), ("stacked", stacked)):
            if entries:
                raise NotImplementedError(f"SGLang's WeightsMapper has no {stage} stage (only orig_to_new_substr, "
                                          f"orig_to_new_prefix and orig_to_new_suffix)")
        return WeightsMapper(orig_to_new_substr=dict(substr or {}), orig_to_new_prefix=dict(prefix or {}),
                             orig_to_new_suffix=dict(suffix or {}))

    def compose_mappers(self, left, right) -> WeightsMapper:
        if not (isinstance(left, WeightsMapper) and isinstance(right, WeightsMapper)):
            raise NotImplementedError(f"SGLang cannot compose {left!r} with {right!r}: maybe_remap_kv_scale_name is "
                                      f"a function its loaders call, not a WeightsMapper")
        return left | right

    def map_name(self, mapper, name: str):
        mapped = mapper.map_name(name) if isinstance(mapper, KVScaleRemap) else mapper._map_name(name)
        return None if mapped is None else (mapped, None)

    def apply_mapper(self, mapper, weights: Weights) -> list[tuple[str, torch.Tensor]]:
        if isinstance(mapper, KVScaleRemap):
            return [(mapped, tensor) for name, tensor in weights if (mapped := mapper.map_name(name)) is not None]
        return list(mapper.apply(weights))

    def cache_scale_mapper(self, quant_method: str) -> KVScaleRemap:
        return KVScaleRemap(quant_method)

    # ------------------------------------------------------------- primitives: LOAD
    def default_weight_loader(self, param: torch.Tensor, weight: torch.Tensor) -> None:
        default_weight_loader(param, weight)

    def auto_load(self, module: torch.nn.Module, weights: Weights, *, mapper=None, quant_method=None,
                  skip_prefixes=(), skip_substrs=()) -> set[str]:
        if quant_method is not None:
            config_class = QUANTIZATION_METHODS[quant_method]
            module.quant_config = config_class.from_config(sglang_model.checkpoint_quantization_config(quant_method))
        loader = AutoWeightsLoader(module, skip_prefixes=list(skip_prefixes), skip_substrs=list(skip_substrs))
        return loader.load_weights(weights, mapper=mapper)

    # ------------------------------------------------------------ primitives: COUNT
    def count_copies(self, fn, *args) -> int:
        with CopyNumelCounter() as counter:
            fn(*args)
        return counter.copied_numel

    # -------------------------------------------------------------------- model tier
    def build_model(self, spec: ModelSpec, *, device: str):
        runtime()
        return sglang_model.build(spec, device=device)

    def first_load(self, model, weights: Weights | Path) -> set[str]:
        return sglang_model.first_load(model, weights)

    def dummy_load(self, model) -> None:
        sglang_model.dummy_load(model)

    def reload(self, model, weights: Weights | Path) -> None:
        sglang_model.reload(model, weights)

    def open_reload(self, model) -> sglang_model.ReloadSession:
        return sglang_model.ReloadSession(model)

    def count_loader_call(self, loader, param, loaded_weight) -> int:
        return self.count_copies(loader, param, loaded_weight)

    def export_kernel_state(self, model) -> dict[str, torch.Tensor]:
        return sglang_model.export_kernel_state(model)

    def kernel_tensors(self, model) -> dict[str, torch.Tensor]:
        return sglang_model.kernel_tensors(model)

    def host_mirrors(self, model) -> dict[str, float]:
        return sglang_model.host_mirrors(model)

    def processing_order(self, model) -> list[str]:
        return list(model.loadspec_events)


class SglangV2Adapter(SglangAdapter):
    """The same with ``SGLANG_ENABLE_WEIGHT_LOADER_V2=1``: ``LlamaForCausalLM._load_weights_v2`` (AutoWeightsLoader)."""

    name = "sglang-v2"
    loader = (f"the opt-in v2 loader ({V2_ENV}=1, set by the adapter for the process): "
              "LlamaForCausalLM._load_weights_v2, AutoWeightsLoader with the registered Llama remap")
    v2 = True


class SglangKvOnlyAdapter(SglangAdapter):
    """Diagnostic: the default loader without ``fp8_per_tensor``, so models keep unquantized linears.

    SGLang's FP8 linear processing drops ``weight_loader`` (every reload of a model with an FP8
    linear fails on it first); this run shows what SGLang's reload does with FP8 KV-cache scales
    and bf16/fp32 weights alone. Not a second implementation: the same classes, fewer capabilities.
    """

    capabilities = CAPABILITIES - {FP8_PER_TENSOR}
    loader = ("the default (legacy) loader path, diagnostic run without FP8 linears (fp8_per_tensor not declared; "
              "FP8 KV-cache scales only)")

    def __init__(self) -> None:
        super().__init__()
        self.report_id = f"sglang-{self.version}-kv-only"


__all__ = ["SglangAdapter", "SglangV2Adapter", "SglangKvOnlyAdapter", "CAPABILITIES", "NOTES", "KVScaleRemap", "V2_ENV"]
