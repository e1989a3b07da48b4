"""The model tier: a Llama-shaped model of vLLM's own layers built from a ``ModelSpec``, and its lifecycle.

Module names are the reference's (``model.layers.N.<container>.{qkv_proj,o_proj,attn}``,
``mlp.{gate_up_proj,down_proj}``, ``embed_tokens``, ``norm``, ``lm_head``, under the spec's
wrappers). Loading is vLLM's Llama loading: the causal-LM level runs
``AutoWeightsLoader(self).load_weights(weights)`` and delegates to the inner model, which holds
``quant_config`` and maps with ``LlamaModel.hf_to_vllm_mapper`` (stacking q/k/v and gate/up).
Glue only: every load, process, reload and finalize step is a vLLM function.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
from torch import nn
from vllm.config.load import LoadConfig
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    LinearBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
from vllm.model_executor.model_loader.dummy_loader import DummyModelLoader
from vllm.model_executor.model_loader.reload import (
    finalize_layerwise_reload,
    initialize_layerwise_reload,
    record_metadata_for_reloading,
)
from vllm.model_executor.model_loader.reload.inplace import reload_weights
from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO
from vllm.model_executor.model_loader.utils import process_weights_after_loading
from vllm.model_executor.model_loader.weight_utils import make_attention_sink, safetensors_weights_iterator
from vllm.model_executor.models.interfaces import SupportsQuant
from vllm.model_executor.models.llama import LlamaForCausalLM, LlamaModel
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper

from loadspec.conformance.adapters import glue
from loadspec.conformance.adapters.glue import ExportLayout
from loadspec.conformance.adapters.vllm_engine.quant_configs import spec_quant_config
from loadspec.conformance.adapters.vllm_engine.runtime import runtime, watch_processing
from loadspec.reference.spec import ModelSpec

# ------------------------------------------------------------------------- modules
SINKS_MAPPER = WeightsMapper(orig_to_new_suffix={".attn.sinks": ".sinks"})
"""The contract's ``<container>.attn.sinks`` to the container's ``sinks``, where vLLM's models hold them."""


class AttentionContainer(nn.Module):
    """``self_attn``/``mixer`` as in vLLM's ``LlamaAttention`` (projections and ``attn``; no rotary embedding).

    With ``sinks``, GPT-OSS's layout (``models/gpt_oss.py`` ``OAIAttention``): the container owns
    ``sinks = make_attention_sink(num_heads)`` and hands it to ``Attention(..., sinks=)`` [RELOAD-15].
    """

    def __init__(self, spec: ModelSpec, attention_first: bool, quant_config, prefix: str, *,
                 sinks: bool = False) -> None:
        super().__init__()
        rt = runtime()
        if sinks:
            self.sinks = make_attention_sink(spec.num_heads)

        def attention() -> Attention:
            return Attention(num_heads=spec.num_heads, head_size=spec.head_dim, scale=spec.head_dim ** -0.5,
                             num_kv_heads=spec.num_kv_heads, cache_config=rt.cache_config(spec.kv_cache_dtype),
                             quant_config=quant_config, prefix=rt.unique(f"{prefix}.attn"),
                             **({"sinks": self.sinks} if sinks else {}))

        if attention_first:  # registration order is what ORDER-2/3 see
            self.attn = attention()
        self.qkv_proj = QKVParallelLinear(spec.hidden_size, spec.head_dim, spec.num_heads, spec.num_kv_heads,
                                          bias=False, quant_config=quant_config, prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(spec.num_heads * spec.head_dim, spec.hidden_size, bias=False,
                                        quant_config=quant_config, prefix=f"{prefix}.o_proj")
        if not attention_first:
            self.attn = attention()


class MLP(nn.Module):
    """vLLM's ``LlamaMLP`` loading surface: ``gate_up_proj`` and ``down_proj``."""

    def __init__(self, spec: ModelSpec, quant_config, prefix: str) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(spec.hidden_size, [spec.intermediate_size] * 2, bias=False,
                                                       quant_config=quant_config, prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(spec.intermediate_size, spec.hidden_size, bias=False,
                                           quant_config=quant_config, prefix=f"{prefix}.down_proj")


class DecoderLayer(nn.Module):
    """vLLM's ``LlamaDecoderLayer`` loading surface, with the spec's container name [NAMES-9]."""

    def __init__(self, spec: ModelSpec, index: int, quant_config, prefix: str) -> None:
        super().__init__()
        container = AttentionContainer(spec, spec.layers[index].attention_first, quant_config,
                                       f"{prefix}.{spec.container}", sinks=spec.layers[index].sinks)
        self.add_module(spec.container, container)
        self.mlp = MLP(spec, quant_config, f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps)


class DecoderModel(nn.Module):
    """vLLM's ``LlamaModel`` loading surface: holds ``quant_config``; loads with Llama's stacked mapper."""

    def __init__(self, spec: ModelSpec, quant_config, prefix: str) -> None:
        super().__init__()
        self.quant_config = quant_config
        self.embed_tokens = VocabParallelEmbedding(spec.vocab_size, spec.hidden_size, quant_config=quant_config,
                                                   prefix=f"{prefix}.embed_tokens")
        self.layers = nn.ModuleList(DecoderLayer(spec, i, quant_config, f"{prefix}.layers.{i}")
                                    for i in range(len(spec.layers)))
        self.norm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps)
        self.mapper = (LlamaModel.hf_to_vllm_mapper | SINKS_MAPPER if any(layer.sinks for layer in spec.layers)
                       else LlamaModel.hf_to_vllm_mapper)

    def load_weights(self, weights):
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.mapper)


class CausalLM(nn.Module, SupportsQuant):
    """vLLM's ``LlamaForCausalLM`` loading surface (``SupportsQuant`` attaches the config's packed mapping)."""

    hf_to_vllm_mapper = LlamaForCausalLM.hf_to_vllm_mapper
    packed_modules_mapping = LlamaForCausalLM.packed_modules_mapping

    def __init__(self, spec: ModelSpec, quant_config, prefix: str) -> None:
        super().__init__()
        join = (lambda name: f"{prefix}.{name}") if prefix else (lambda name: name)
        self.model = DecoderModel(spec, quant_config, join("model"))
        self.lm_head = ParallelLMHead(spec.vocab_size, spec.hidden_size, quant_config=quant_config,
                                      prefix=join("lm_head"))
        if spec.tie_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)

    def load_weights(self, weights):
        return AutoWeightsLoader(self).load_weights(weights)


class Wrapper(nn.Module):
    """An outer model (e.g. a multimodal ``*ForConditionalGeneration``) whose loader delegates to its children."""

    def load_weights(self, weights):
        return AutoWeightsLoader(self).load_weights(weights)


# ---------------------------------------------------------------------------- build
def build(spec: ModelSpec, *, device: str = "cpu") -> nn.Module:
    """The model of ``spec`` in checkpoint format, built as vLLM's loader builds models; reload metadata recorded."""
    if spec.attention == "mla":
        raise NotImplementedError("the vLLM adapter does not declare mla: the CPU MLA backend rejects fp8 KV caches")
    _move_on()
    rt = runtime()
    quant_config = spec_quant_config(spec)
    with rt.building(spec.params_dtype, device):
        inner = CausalLM(spec, quant_config, ".".join(spec.wrapper))
        if spec.wrapper:
            root = holder = Wrapper()
            for name in spec.wrapper[:-1]:
                holder.add_module(name, nn.Module())
                holder = getattr(holder, name)
            holder.add_module(spec.wrapper[-1], inner)
        else:
            root = inner
        record_metadata_for_reloading(root)
    _forget_attention_when_collected(root, spec.params_dtype)
    root.loadspec_spec = spec  # type: ignore[assignment]  # read back by every lifecycle step
    root.loadspec_device = device  # type: ignore[assignment]
    watch_processing(root)
    return root


def _forget_attention_when_collected(root: nn.Module, dtype: str) -> None:
    """Drop the model's attention layers from vLLM's per-config layer registry once the model is collected.

    ``Attention.__init__`` registers every layer in ``static_forward_context`` (a serving
    process builds one model; the suite builds thousands), which would otherwise keep
    every attention layer of every model alive.
    """
    registry = runtime().vllm_config(dtype).compilation_config.static_forward_context
    names = [m.layer_name for m in root.modules() if isinstance(m, Attention)]
    weakref.finalize(root, lambda: [registry.pop(name, None) for name in names])


# -------------------------------------------------------------- reload bookkeeping
_ABANDONED: list = []


def _move_on(model=None) -> None:
    """Drop vLLM's global reload bookkeeping of a model whose reload raised, once the suite moves to another model.

    A reload that raises inside ``model.load_weights`` leaves the model half-reloaded (meta
    tensors, wrapped loaders) and its entries in ``reload.layerwise.LAYERWISE_INFO``; those
    entries reference their own keys, so the model is never freed. The suite inspects such
    a model right after the failure [LOAD-6, RELOAD-9], so the entries are dropped only when
    the next model operation concerns a different model.
    """
    while _ABANDONED and _ABANDONED[0] is not model:
        for layer in _ABANDONED.pop(0).modules():
            LAYERWISE_INFO.pop(layer, None)


class _AbandonOnError:
    """Marks ``model`` abandoned (see ``_move_on``) when the block raises; never swallows the error."""

    def __init__(self, model) -> None:
        self.model = model

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None and not any(m is self.model for m in _ABANDONED):
            _ABANDONED.append(self.model)


def _building(model):
    return runtime().building(model.loadspec_spec.params_dtype, model.loadspec_device)


def _model_config(model):
    return runtime().model_config(model.loadspec_spec.params_dtype)


def weights_of(source):
    """``source`` itself, or vLLM's safetensors iterator over the checkpoint directory it names."""
    if not isinstance(source, (str, Path)):
        return source
    files = sorted(str(p) for p in Path(source).glob("*.safetensors"))
    return safetensors_weights_iterator(files, False)


# ------------------------------------------------------------------------ lifecycle
def first_load(model, source) -> set[str]:
    """``model.load_weights`` + ``process_weights_after_loading``, as ``BaseModelLoader.load_model`` runs them.

    The missing-weights check (``track_weights_loading``) runs where vLLM runs it by
    default: for unquantized models only (``model_config.quantization is None``) [LOAD-7].
    """
    _move_on(model)
    model.loadspec_events = []
    with _building(model):
        loaded = model.load_weights(weights_of(source))
        if model.loadspec_spec.quant_method is None and loaded is not None:
            DefaultModelLoader(LoadConfig()).track_weights_loading(model, loaded, quantized=False)
        process_weights_after_loading(model, _model_config(model), torch.device(model.loadspec_device))
    return loaded


def dummy_load(model) -> None:
    """vLLM's ``DummyModelLoader`` then ``process_weights_after_loading`` [KVPROC-6, E2E-2]."""
    model.loadspec_events = []
    with _building(model):
        DummyModelLoader(LoadConfig(load_format="dummy")).load_weights(model, _model_config(model))
        process_weights_after_loading(model, _model_config(model), torch.device(model.loadspec_device))


def reload(model, source) -> None:
    """``reload.inplace.reload_weights`` (checkpoint format): initialize, ``model.load_weights``, finalize."""
    _move_on(model)
    model.loadspec_events = []
    with _building(model), _AbandonOnError(model):
        reload_weights(runtime().vllm_config(model.loadspec_spec.params_dtype), model, weights_of(source), None,
                       is_checkpoint_format=True)


class ReloadSession:
    """``initialize_layerwise_reload``, ``model.load_weights`` once per ``load``, then ``finalize_layerwise_reload``."""

    def __init__(self, model) -> None:
        self.model = model
        _move_on(model)
        model.loadspec_events = []
        with _building(model), _AbandonOnError(model):
            initialize_layerwise_reload(model)

    def load(self, weights) -> None:
        with _building(self.model), _AbandonOnError(self.model):
            self.model.load_weights(weights_of(weights))

    def finish(self) -> None:
        with _building(self.model), _AbandonOnError(self.model):
            finalize_layerwise_reload(self.model, _model_config(self.model))


# --------------------------------------------------------------------------- export
def _transposed(module: LinearBase, weight: torch.Tensor) -> bool:
    """vLLM keeps the processed FP8 weight as an (in, out) view."""
    return tuple(weight.shape) == (module.input_size_per_partition, module.output_size_per_partition)


def _input_scale(module: LinearBase) -> torch.Tensor | None:
    """The static activation scale (ModelOpt FP8)."""
    return getattr(module, "input_scale", None)


def _attention_scales(layer: Attention) -> dict[str, torch.Tensor]:
    """The processed buffers; per KV head where the layer's compressed-tensors ``kv_cache_scheme`` says
    ``attn_head`` (``CompressedTensorsKVCacheMethod`` registers ``_q/_k/_v_scale`` as ``(num_kv_heads,)``) [HEADS-1]."""
    scheme = getattr(getattr(getattr(layer, "quant_method", None), "quant_config", None), "kv_cache_scheme", None)
    per_head = isinstance(scheme, dict) and scheme.get("strategy") == "attn_head"
    return glue.head_buffer_scales(layer) if per_head else glue.buffer_scales(layer)


EXPORT = ExportLayout(attention=Attention, attention_scales=_attention_scales, linear=LinearBase,
                      transposed=_transposed, input_scale=_input_scale, embedding=VocabParallelEmbedding, norm=RMSNorm)
"""vLLM's canonical export: attention scales from the processed ``_q/_k/_v/_prob_scale`` buffers (per head
under ``attn_head``)."""


def export_kernel_state(model) -> dict[str, torch.Tensor]:
    """vLLM's kernel tensors in the canonical names and layouts.

    FP8 linears: the weight as ``[out, in]``; a per-tensor scale as ``()``, a per-channel
    scale ``(out, 1)`` as ``(out,)``. Attention: ``_q/_k/_v/_prob_scale`` as 0-d float32.
    Embedding and ``lm_head``: the first ``vocab_size`` rows (vLLM pads the vocabulary to a
    multiple of 64).
    """
    state = glue.export_kernel_state(model, EXPORT)
    state.update({f"{name}.attn.sinks": glue.cpu(module.sinks) for name, module in _sink_owners(model)})
    return state


def _sink_owners(model):
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, AttentionContainer) and "sinks" in module._parameters]


def kernel_tensors(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name; a container's ``sinks`` under the contract's ``<container>.attn.sinks``."""
    tensors = glue.kernel_tensors(model)
    for name, _ in _sink_owners(model):
        tensors[f"{name}.attn.sinks"] = tensors.pop(f"{name}.sinks")
    return tensors


__all__ = ["build", "first_load", "dummy_load", "reload", "ReloadSession", "export_kernel_state", "kernel_tensors",
           "weights_of"]
