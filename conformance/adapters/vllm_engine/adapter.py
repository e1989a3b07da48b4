"""``VllmAdapter``: vLLM's own classes and functions behind loadspec's adapter protocol.

The primitives tier is here (``KVCacheScaleParameter``, ``Attention`` with an FP8 KV-cache
method, ``WeightsMapper``, each config's cache-scale mapper, ``default_weight_loader``,
``AutoWeightsLoader``, ``CopyCounter``); the model tier delegates to ``model``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from unittest import mock

import regex
import torch
import vllm
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.quantization.compressed_tensors import compressed_tensors as ct_module
from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
    CompressedTensorsConfig,
    CompressedTensorsKVCacheMethod,
)
from vllm.model_executor.layers.quantization.fp8 import Fp8Config
from vllm.model_executor.layers.quantization.kv_cache import KVCacheScaleParameter
from vllm.model_executor.model_loader.reload.meta import CopyCounter, get_numel_loaded
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper

from loadspec.conformance.adapter import Weights
from loadspec.conformance.adapters import glue
from loadspec.conformance.adapters.vllm_engine import model as vllm_model
from loadspec.conformance.adapters.vllm_engine.quant_configs import (
    checkpoint_quantization_config,
    primitive_quant_config,
    quant_config_class,
    quantization_config_dict,
)
from loadspec.conformance.adapters.vllm_engine.runtime import DEFAULT_DTYPE, runtime
from loadspec.reference.spec import ModelSpec

CAPABILITIES = frozenset({
    "primitives", "model", "reload_sessions", "processing_order", "fp8_per_tensor", "tied_embeddings",
    "nested_wrappers", "mixer_container", "reduced_precision_params",
    # the quant config says static W8A8 (quant_configs.quantization_config_dict) and vLLM's config classes build
    # it: Fp8Config/CompressedTensorsConfig/QuarkConfig static inputs, ModelOpt always
    "static_input_scales",
    # set_default_quant_scales and every KV method keep _q/_k/_v/_prob_scale_float and _k/_v_scale_cpu [LOAD-18];
    # CompressedTensorsKVCacheMethod loads attn_head scales (_tp_aware_loader), exported per head [HEADS-1]
    "host_mirrors", "kv_scales_per_head", "tp_head_slicing",
    # CompressedTensorsW8A8Fp8 (weights.strategy channel) and QuarkW8A8Fp8 (qscheme per_channel) load per-channel
    # FP8 weights; Fp8Config and ModelOpt FP8 have no per-channel scheme, so fp8_per_channel_any_format is not declared
    "fp8_per_channel",
    # WeightsMapper's orig_to_new_* dicts are the entries, keyed as make_mapper keys them [NAMES-10]
    "mapper_entries",
    # GPT-OSS's layout: the container owns make_attention_sink's parameter and passes it to Attention [RELOAD-15]
    "attention_sinks",
})

NOTES = (
    "vLLM {version} on CPU (VLLM_TARGET_DEVICE=cpu, torch {torch}). "
    "Stand-in installed: vllm._custom_ops.scaled_fp8_quant is replaced by a pure-torch version for the static "
    "per-tensor case (x / scale, clamped to +-448, cast to float8_e4m3fn); other calls go to the original, which "
    "needs the compiled op that the CPU wheel lacks. Guard installed: where the host has AMX tiles, "
    "layers.utils.check_cpu_sgl_kernel answers False while torch.ops._C.convert_weight_packed is absent, so bf16 "
    "unquantized linears take the F.linear fallback of hosts without AMX. Recorders installed (they record, "
    "then call the original): per-instance process_weights_after_loading of quant methods and Attention layers, and "
    "reload.layerwise._layerwise_process, for processing_order. "
    "Construction: one tiny Llama ModelConfig/VllmConfig per parameter dtype, a 1-rank gloo process group, "
    "layers built inside set_current_vllm_config under set_default_torch_dtype(<spec params_dtype>, default "
    "float32) and torch.device, attention prefixes made unique per process. Primitives: Attention with "
    "Fp8Config(activation_scheme='dynamic') built under float32. Models: a Llama-shaped tree of "
    "VocabParallelEmbedding/RMSNorm/QKVParallelLinear/RowParallelLinear/MergedColumnParallelLinear/Attention/"
    "ParallelLMHead; outer AutoWeightsLoader, inner AutoWeightsLoader with LlamaModel.hf_to_vllm_mapper; quant "
    "config built from a config.json dict by Fp8Config/CompressedTensorsConfig/ModelOptFp8Config/QuarkConfig."
    "from_config (unquantized linears and lm_head in its ignore list; static or dynamic activations and per-tensor "
    "or attn_head KV scales as the spec says; in E2E and --checkpoint runs the checkpoint's own "
    "quantization_config, unchanged); first load = model.load_weights + "
    "DefaultModelLoader.track_weights_loading when unquantized + process_weights_after_loading; reload = "
    "reload.inplace.reload_weights; sessions = initialize_layerwise_reload / load_weights... / "
    "finalize_layerwise_reload. Sinks: GPT-OSS's layout (the container owns make_attention_sink's parameter and "
    "passes it to Attention(sinks=); the contract's <container>.attn.sinks is mapped to <container>.sinks by a "
    "suffix entry and exported and listed under the contract's name). Per-head KV scales: exported as "
    "(num_kv_heads,) as CompressedTensorsKVCacheMethod registers them. slice_head_scales: the attn_head "
    "_tp_aware_loader of a layer with max(1, total_kv_heads // tp) KV heads, get_tensor_model_parallel_rank/"
    "world_size answering the asked rank and size (one process). "
    "Not declared: mla (the CPU MLA backend rejects fp8 KV caches), "
    "per_token_head_kv (the CPU attention backend rejects per-token-head dtypes), fp8_per_channel_any_format "
    "(Fp8Config and ModelOpt FP8 cannot express per-channel weights; compressed-tensors and Quark can, and "
    "fp8_per_channel is declared), skip_rules (AutoWeightsLoader has no "
    "skip_prefixes since #53106), "
    "cuda (the CUDA platform needs compiled ops the CPU environment lacks)."
)


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
        with torch.device(device):
            return KVCacheScaleParameter()

    def load_scale(self, param: torch.Tensor, weight: torch.Tensor) -> None:
        param.weight_loader(param, weight)  # type: ignore[attr-defined]  # the scale parameter's own loader [SCALE-3]

    # ----------------------------------------------------------- primitives: KVPROC
    def make_attention(self, *, kv_cache_dtype: str, device: str) -> Attention:
        rt = runtime()
        with rt.building(DEFAULT_DTYPE, device):
            return Attention(num_heads=2, head_size=4, scale=0.5, num_kv_heads=1,
                             cache_config=rt.cache_config(kv_cache_dtype),
                             quant_config=Fp8Config(activation_scheme="dynamic"), prefix=rt.unique("attn"))

    def attention_scale_parameters(self, layer: Attention) -> dict[str, torch.Tensor]:
        return glue.scale_parameters(layer)

    def create_scale_weights(self, layer: Attention) -> None:
        layer.quant_method.create_weights(layer)

    def process_attention(self, layer: Attention) -> None:
        layer.quant_method.process_weights_after_loading(layer)

    def attention_outputs(self, layer: Attention) -> dict[str, torch.Tensor]:
        return glue.output_buffers(layer)

    def attention_mirrors(self, layer: Attention) -> dict[str, float]:
        return glue.vocabulary_mirrors(layer)

    # -------------------------------------------------------------- primitives: MAP
    def make_mapper(self, *, regex=None, substr=None, stacked=None, prefix=None, suffix=None) -> WeightsMapper:
        return WeightsMapper(  # vLLM keys its regex stage by `regex` patterns
            orig_to_new_regex={_compile(pattern): new for pattern, new in (regex or {}).items()},
            orig_to_new_substr=dict(substr or {}), orig_to_new_stacked=dict(stacked or {}),
            orig_to_new_prefix=dict(prefix or {}), orig_to_new_suffix=dict(suffix or {}))

    def compose_mappers(self, left: WeightsMapper, right: WeightsMapper) -> WeightsMapper:
        return left | right

    def map_name(self, mapper: WeightsMapper, name: str):
        return mapper._map_name_with_shard(name)

    def apply_mapper(self, mapper: WeightsMapper, weights: Weights) -> list[tuple[str, torch.Tensor]]:
        return list(mapper.apply(weights))

    def mapper_entries(self, mapper: WeightsMapper) -> dict[str, dict]:
        return {stage: dict(getattr(mapper, f"orig_to_new_{stage}"))  # orig_to_new_renaming has no contract stage
                for stage in ("regex", "substr", "stacked", "prefix", "suffix")}

    def cache_scale_mapper(self, quant_method: str) -> WeightsMapper:
        return quant_config_class(quant_method).get_cache_scale_mapper()

    # ------------------------------------------------------------- primitives: LOAD
    def default_weight_loader(self, param: torch.Tensor, weight: torch.Tensor) -> None:
        default_weight_loader(param, weight)

    def auto_load(self, module: torch.nn.Module, weights: Weights, *, mapper=None, quant_method=None,
                  skip_prefixes=(), skip_substrs=()) -> set[str]:
        if quant_method is not None:
            runtime()
            module.quant_config = primitive_quant_config(quant_method)  # type: ignore[assignment]  # [NAMES-10]
        skips = {k: list(v) for k, v in (("skip_prefixes", skip_prefixes), ("skip_substrs", skip_substrs)) if v}
        return AutoWeightsLoader(module, **skips).load_weights(weights, mapper=mapper)  # skips: TypeError in 0.33

    # ------------------------------------------------------------ primitives: COUNT
    def count_copies(self, fn, *args) -> int:
        with CopyCounter() as counter:
            fn(*args)
        return counter.copied_numel

    # -------------------------------------------------------------------- model tier
    def checkpoint_quantization_config(self, qconfig: dict | None):
        """A context in which ``build_model`` passes this checkpoint's own ``quantization_config`` through vLLM's
        config class (``from_config``), as vLLM does for a served checkpoint (E2E and ``--checkpoint``)."""
        return checkpoint_quantization_config(qconfig)

    def build_model(self, spec: ModelSpec, *, device: str):
        return vllm_model.build(spec, device=device)

    def first_load(self, model, weights: Weights | Path) -> set[str]:
        return vllm_model.first_load(model, weights)

    def dummy_load(self, model) -> None:
        vllm_model.dummy_load(model)

    def reload(self, model, weights: Weights | Path) -> None:
        vllm_model.reload(model, weights)

    def open_reload(self, model) -> vllm_model.ReloadSession:
        return vllm_model.ReloadSession(model)

    def count_loader_call(self, loader, param, loaded_weight) -> int:
        counted, _ = get_numel_loaded(loader, inspect.signature(loader).bind(param, loaded_weight))
        return counted

    def export_kernel_state(self, model) -> dict[str, torch.Tensor]:
        return vllm_model.export_kernel_state(model)

    def kernel_tensors(self, model) -> dict[str, torch.Tensor]:
        return vllm_model.kernel_tensors(model)

    def host_mirrors(self, model) -> dict[str, float]:
        return glue.host_mirrors(model, Attention, self.attention_mirrors)

    def processing_order(self, model) -> list[str]:
        return list(model.loadspec_events)

    def slice_head_scales(self, scale, *, kind, total_heads, total_kv_heads, tp_rank, tp_size) -> torch.Tensor:
        """What ``CompressedTensorsKVCacheMethod``'s ``_tp_aware_loader`` writes on rank ``tp_rank`` of ``tp_size``
        [HEADS-8]: the loader of a layer holding ``max(1, total_kv_heads // tp_size)`` KV heads (as ``LlamaAttention``
        computes it), with vLLM's two TP-group queries answering ``tp_rank``/``tp_size`` (one process here)."""
        config = CompressedTensorsConfig.from_config(dict(
            quantization_config_dict("compressed-tensors", {}, [], kv_strategy="attn_head"),
            total_num_heads=total_heads, total_num_kv_heads=total_kv_heads))
        layer = torch.nn.Module()
        layer.num_kv_heads = max(1, total_kv_heads // tp_size)
        CompressedTensorsKVCacheMethod(config).create_weights(layer)
        param = getattr(layer, f"{kind}_scale")
        with mock.patch.object(ct_module, "get_tensor_model_parallel_rank", lambda: tp_rank), \
                mock.patch.object(ct_module, "get_tensor_model_parallel_world_size", lambda: tp_size):
            param.weight_loader(param, scale)
        return param.detach().clone()


def _compile(pattern):
    return regex.compile(pattern) if isinstance(pattern, str) else pattern


__all__ = ["VllmAdapter", "CAPABILITIES", "NOTES"]
