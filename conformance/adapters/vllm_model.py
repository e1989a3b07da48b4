"""The model tier of the vLLM adapter: a Llama-shaped model of vLLM's own layers, built from a ``ModelSpec``.

Module names are the reference's (``model.layers.N.<container>.{qkv_proj,o_proj,attn}``,
``mlp.{gate_up_proj,down_proj}``, ``embed_tokens``, ``norm``, ``lm_head``, under the
spec's wrappers). Loading is vLLM's Llama loading: the causal-LM level runs
``AutoWeightsLoader(self).load_weights(weights)`` and delegates to the inner model,
which holds ``quant_config`` and runs ``AutoWeightsLoader(self).load_weights(weights,
mapper=LlamaModel.hf_to_vllm_mapper)`` (stacking q/k/v and gate/up). The quantization
config is the object vLLM's ``from_config`` makes of a ``quantization_config`` dict
describing the spec (which linears are FP8 and how; unquantized linears and
``lm_head`` in its ignore list). Glue only: every load, process, reload and
finalize step is a vLLM function.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from loadspec.conformance.adapters.vllm import DTYPES, runtime, watch_processing
from loadspec.reference.spec import ModelSpec
from loadspec.reference.synthetic import hf_linears

FP8 = torch.float8_e4m3fn
KV_SCHEME = {"type": "float", "num_bits": 8, "strategy": "tensor", "symmetric": True, "dynamic": False}


# --------------------------------------------------------------------- quant configs
def quant_config_class(quant_method: str | None):
    """vLLM's config class for a checkpoint's ``quant_method`` (base class for none)."""
    from vllm.model_executor.layers.quantization.base_config import QuantizationConfig

    if not quant_method:
        return QuantizationConfig
    if quant_method == "fp8":
        from vllm.model_executor.layers.quantization.fp8 import Fp8Config
        return Fp8Config
    if quant_method == "compressed-tensors":
        from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
            CompressedTensorsConfig)
        return CompressedTensorsConfig
    if quant_method == "modelopt":
        from vllm.model_executor.layers.quantization.modelopt import ModelOptFp8Config
        return ModelOptFp8Config
    if quant_method == "quark":
        from vllm.model_executor.layers.quantization.quark.quark import QuarkConfig
        return QuarkConfig
    raise ValueError(f"quant_method={quant_method!r} has no vLLM config in this adapter")


def quantization_config_dict(quant_method: str, linear_schemes: dict[str, str], ignored) -> dict:
    """The ``config.json`` ``quantization_config`` a producer of ``quant_method`` writes for these linears.

    ``linear_schemes`` maps checkpoint linear names to ``fp8_per_tensor``/``fp8_per_channel``;
    ``ignored`` lists the unquantized ones. FP8 activations are dynamic (the
    checkpoints carry no ``input_scale``), except where the format has no dynamic
    variant (ModelOpt ``FP8`` is static W8A8).
    """
    per_tensor = [n for n, s in linear_schemes.items() if s == "fp8_per_tensor"]
    per_channel = [n for n, s in linear_schemes.items() if s == "fp8_per_channel"]
    if quant_method in ("fp8", "modelopt") and per_channel:
        raise NotImplementedError(
            f"vLLM's {quant_config_class(quant_method).__name__} has no per-channel FP8 linear scheme "
            f"({per_channel[0]} is fp8_per_channel); the vLLM adapter does not declare fp8_per_channel")
    if quant_method == "fp8":
        return {"quant_method": "fp8", "activation_scheme": "dynamic", "ignored_layers": list(ignored)}
    if quant_method == "modelopt":
        return {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8",
                "exclude_modules": list(ignored)}
    if quant_method == "compressed-tensors":
        groups = {}
        for group, names, strategy in (("fp8_tensor", per_tensor, "tensor"), ("fp8_channel", per_channel, "channel")):
            if names:
                groups[group] = {
                    "targets": names,
                    "weights": {"num_bits": 8, "type": "float", "strategy": strategy, "dynamic": False,
                                "symmetric": True},
                    "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True,
                                          "symmetric": True}}
        return {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": groups,
                "ignore": list(ignored), "kv_cache_scheme": dict(KV_SCHEME)}
    if quant_method == "quark":
        def weight(strategy):
            return {"dtype": "fp8_e4m3", "qscheme": f"per_{strategy}", "is_dynamic": False, "symmetric": True,
                    **({"ch_axis": 0} if strategy == "channel" else {})}
        dynamic_input = {"dtype": "fp8_e4m3", "qscheme": "per_tensor", "is_dynamic": True, "symmetric": True}
        kv_output = {"dtype": "fp8_e4m3", "qscheme": "per_tensor", "is_dynamic": False, "symmetric": True}

        def entry(strategy, name):
            kv = name.endswith(("k_proj", "v_proj"))
            return {"weight": weight(strategy), "input_tensors": dynamic_input,
                    "output_tensors": dict(kv_output) if kv else None}
        layers = {name: entry("channel", name) for name in per_channel}
        layers.update({"*k_proj": entry("tensor", "k_proj"), "*v_proj": entry("tensor", "v_proj")})
        return {"quant_method": "quark", "export": {"kv_cache_group": ["*k_proj", "*v_proj"], "pack_method": "reorder"},
                "global_quant_config": {"weight": weight("tensor"), "input_tensors": dynamic_input,
                                        "output_tensors": None},
                "layer_quant_config": layers, "layer_type_quant_config": {}, "exclude": list(ignored)}
    raise ValueError(f"quant_method={quant_method!r} has no vLLM config in this adapter")


def quant_config_for(quant_method: str | None, linear_schemes: dict[str, str], ignored):
    """vLLM's quantization config object for a checkpoint, made by the config class's own ``from_config``."""
    if not quant_method:
        return None
    return quant_config_class(quant_method).from_config(
        quantization_config_dict(quant_method, linear_schemes, ignored))


def spec_quant_config(spec: ModelSpec):
    """The quantization config a checkpoint of ``spec`` declares."""
    if spec.quant_method is None:
        return None
    schemes, ignored = {}, []
    for index in range(len(spec.layers)):
        for name, (_, _, scheme) in hf_linears(spec, index).items():
            if scheme == "none":
                ignored.append(name)
            else:
                schemes[name] = scheme
    ignored.append(spec.lm_head_name.removesuffix(".weight"))
    return quant_config_for(spec.quant_method, schemes, ignored)


# ------------------------------------------------------------------------- modules
class AttentionContainer(nn.Module):
    """``self_attn``/``mixer`` as in vLLM's ``LlamaAttention`` (projections and ``attn``; no rotary embedding)."""

    def __init__(self, spec: ModelSpec, attention_first: bool, quant_config, prefix: str) -> None:
        super().__init__()
        from vllm.model_executor.layers.attention import Attention
        from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear

        rt = runtime()
        attention = lambda: Attention(  # noqa: E731
            num_heads=spec.num_heads, head_size=spec.head_dim, scale=spec.head_dim ** -0.5,
            num_kv_heads=spec.num_kv_heads, cache_config=rt.CacheConfig(cache_dtype=spec.kv_cache_dtype),
            quant_config=quant_config, prefix=rt.unique(f"{prefix}.attn"))
        if attention_first:
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
        from vllm.model_executor.layers.linear import MergedColumnParallelLinear, RowParallelLinear

        self.gate_up_proj = MergedColumnParallelLinear(spec.hidden_size, [spec.intermediate_size] * 2, bias=False,
                                                       quant_config=quant_config, prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(spec.intermediate_size, spec.hidden_size, bias=False,
                                           quant_config=quant_config, prefix=f"{prefix}.down_proj")


class DecoderLayer(nn.Module):
    """vLLM's ``LlamaDecoderLayer`` loading surface, with the spec's container name."""

    def __init__(self, spec: ModelSpec, index: int, quant_config, prefix: str) -> None:
        super().__init__()
        from vllm.model_executor.layers.layernorm import RMSNorm

        layer = spec.layers[index]
        self.add_module(spec.container, AttentionContainer(spec, layer.attention_first, quant_config,
                                                           f"{prefix}.{spec.container}"))
        self.mlp = MLP(spec, quant_config, f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps)


class DecoderModel(nn.Module):
    """vLLM's ``LlamaModel`` loading surface: holds ``quant_config``; loads with Llama's stacked mapper."""

    def __init__(self, spec: ModelSpec, quant_config, prefix: str) -> None:
        super().__init__()
        from vllm.model_executor.layers.layernorm import RMSNorm
        from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

        self.quant_config = quant_config
        self.embed_tokens = VocabParallelEmbedding(spec.vocab_size, spec.hidden_size, quant_config=quant_config,
                                                   prefix=f"{prefix}.embed_tokens")
        self.layers = nn.ModuleList(DecoderLayer(spec, i, quant_config, f"{prefix}.layers.{i}")
                                    for i in range(len(spec.layers)))
        self.norm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps)

    def load_weights(self, weights):
        from vllm.model_executor.models.llama import LlamaModel
        from vllm.model_executor.models.utils import AutoWeightsLoader

        return AutoWeightsLoader(self).load_weights(weights, mapper=LlamaModel.hf_to_vllm_mapper)


def _causal_lm_class():
    from vllm.model_executor.models.interfaces import SupportsQuant
    from vllm.model_executor.models.llama import LlamaForCausalLM

    class CausalLM(nn.Module, SupportsQuant):
        """vLLM's ``LlamaForCausalLM`` loading surface (``SupportsQuant`` attaches the config's packed mapping)."""

        hf_to_vllm_mapper = LlamaForCausalLM.hf_to_vllm_mapper
        packed_modules_mapping = LlamaForCausalLM.packed_modules_mapping

        def __init__(self, spec: ModelSpec, quant_config, prefix: str) -> None:
            super().__init__()
            from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

            join = (lambda name: f"{prefix}.{name}") if prefix else (lambda name: name)
            self.model = DecoderModel(spec, quant_config, join("model"))
            self.lm_head = ParallelLMHead(spec.vocab_size, spec.hidden_size, quant_config=quant_config,
                                          prefix=join("lm_head"))
            if spec.tie_embeddings:
                self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)

        def load_weights(self, weights):
            from vllm.model_executor.models.utils import AutoWeightsLoader

            return AutoWeightsLoader(self).load_weights(weights)

    return CausalLM


_CAUSAL_LM = None


class Wrapper(nn.Module):
    """An outer model (e.g. a multimodal ``*ForConditionalGeneration``) whose loader delegates to its children."""

    def load_weights(self, weights):
        from vllm.model_executor.models.utils import AutoWeightsLoader

        return AutoWeightsLoader(self).load_weights(weights)


# --------------------------------------------------------------------- entry points
def build(spec: ModelSpec, *, device: str = "cpu") -> nn.Module:
    """The model of ``spec`` in checkpoint format, built as vLLM's loader builds models; reload metadata recorded."""
    global _CAUSAL_LM
    from vllm.model_executor.model_loader.reload import record_metadata_for_reloading

    if spec.attention != "mla" and _CAUSAL_LM is None:
        _CAUSAL_LM = _causal_lm_class()
    if spec.attention == "mla":
        raise NotImplementedError("the vLLM adapter does not declare mla: the CPU MLA backend rejects fp8 KV caches")
    _move_on()
    rt = runtime()
    quant_config = spec_quant_config(spec)
    with rt.building(spec.params_dtype, device):
        inner = _CAUSAL_LM(spec, quant_config, ".".join(spec.wrapper))
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
    root.loadspec_spec = spec
    root.loadspec_device = device
    watch_processing(root)
    return root


def _forget_attention_when_collected(root: nn.Module, dtype: str) -> None:
    """Drop the model's attention layers from vLLM's per-config layer registry once the model is collected.

    ``Attention.__init__`` registers every layer in ``static_forward_context`` (a
    serving process builds one model; the suite builds thousands), which would
    otherwise keep every attention layer of every model alive.
    """
    import weakref

    from vllm.model_executor.layers.attention import Attention

    registry = runtime().vllm_config(dtype).compilation_config.static_forward_context
    names = [m.layer_name for m in root.modules() if isinstance(m, Attention)]
    weakref.finalize(root, lambda: [registry.pop(name, None) for name in names])


def weights_of(source):
    """``source`` itself, or vLLM's safetensors iterator over the checkpoint directory it names."""
    if not isinstance(source, (str, Path)):
        return source
    from vllm.model_executor.model_loader.weight_utils import safetensors_weights_iterator

    files = sorted(str(p) for p in Path(source).glob("*.safetensors"))
    return safetensors_weights_iterator(files, False)


_ABANDONED: list = []


def _move_on(model=None) -> None:
    """Drop vLLM's global reload bookkeeping of a model whose reload raised, once the suite moves to another model.

    A reload that raises inside ``model.load_weights`` leaves the model half-reloaded
    (meta tensors, wrapped loaders) and its entries in ``reload.layerwise.LAYERWISE_INFO``;
    those entries reference their own keys, so the model is never freed. The suite
    inspects such a model right after the failure, so the entries are dropped only
    when the next model operation concerns a different model.
    """
    from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO

    while _ABANDONED and _ABANDONED[0] is not model:
        for layer in _ABANDONED.pop(0).modules():
            LAYERWISE_INFO.pop(layer, None)


def _abandon_on_error(model):
    class Guard:
        def __enter__(self):
            return self

        def __exit__(self, kind, value, traceback):
            if kind is not None and not any(m is model for m in _ABANDONED):
                _ABANDONED.append(model)
            return False
    return Guard()


def _building(model):
    spec = model.loadspec_spec
    return runtime().building(spec.params_dtype, model.loadspec_device)


def _model_config(model):
    return runtime().model_config(model.loadspec_spec.params_dtype)


def first_load(model, source) -> set[str]:
    """``DefaultModelLoader.load_weights`` + ``process_weights_after_loading``, as ``BaseModelLoader.load_model`` runs them.

    The missing-weights check (``track_weights_loading``) runs where vLLM runs it
    by default: for unquantized models only (``model_config.quantization is None``).
    """
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    _move_on(model)
    model.loadspec_events = []
    with _building(model):
        loaded = model.load_weights(weights_of(source))
        if model.loadspec_spec.quant_method is None and loaded is not None:
            DefaultModelLoader(LoadConfig()).track_weights_loading(model, loaded, quantized=False)
        process_weights_after_loading(model, _model_config(model), torch.device(model.loadspec_device))
    return loaded


def dummy_load(model) -> None:
    """vLLM's ``DummyModelLoader`` then ``process_weights_after_loading``."""
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader.dummy_loader import DummyModelLoader
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    model.loadspec_events = []
    with _building(model):
        DummyModelLoader(LoadConfig(load_format="dummy")).load_weights(model, _model_config(model))
        process_weights_after_loading(model, _model_config(model), torch.device(model.loadspec_device))


def reload(model, source) -> None:
    """``reload.inplace.reload_weights`` (checkpoint format): initialize, ``model.load_weights``, finalize."""
    from vllm.model_executor.model_loader.reload.inplace import reload_weights

    _move_on(model)
    model.loadspec_events = []
    with _building(model), _abandon_on_error(model):
        reload_weights(runtime().vllm_config(model.loadspec_spec.params_dtype), model, weights_of(source), None,
                       is_checkpoint_format=True)


class ReloadSession:
    """``initialize_layerwise_reload``, then ``model.load_weights`` once per ``load``, then ``finalize_layerwise_reload``."""

    def __init__(self, model) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        self.model = model
        _move_on(model)
        model.loadspec_events = []
        with _building(model), _abandon_on_error(model):
            initialize_layerwise_reload(model)

    def load(self, weights) -> None:
        with _building(self.model), _abandon_on_error(self.model):
            self.model.load_weights(weights_of(weights))

    def finish(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        with _building(self.model), _abandon_on_error(self.model):
            finalize_layerwise_reload(self.model, _model_config(self.model))


# --------------------------------------------------------------------------- export
def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


def export_kernel_state(model) -> dict[str, torch.Tensor]:
    """vLLM's kernel tensors in the canonical names and layouts.

    FP8 linears: vLLM keeps the processed weight as a ``(in, out)`` view, exported
    as ``[out, in]``; its per-tensor scale (0-d or one element) as ``()``, a
    per-channel scale ``(out, 1)`` as ``(out,)``. Attention: ``_q/_k/_v/_prob_scale``
    as 0-d float32. Embedding and ``lm_head``: the first ``vocab_size`` rows
    (vLLM pads the vocabulary to a multiple of 64).
    """
    from vllm.model_executor.layers.attention import Attention
    from vllm.model_executor.layers.layernorm import RMSNorm
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    state: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            for kind in ("q", "k", "v", "prob"):
                state[f"{name}.{kind}_scale"] = _cpu(getattr(module, f"_{kind}_scale")).reshape(()).float()
        elif isinstance(module, LinearBase):
            weight = module.weight
            if weight.dtype == FP8:
                kernel_layout = (module.input_size_per_partition, module.output_size_per_partition)
                if tuple(weight.shape) == kernel_layout:
                    weight = weight.t()
                scale = module.weight_scale
                scale = scale.reshape(()) if scale.numel() == 1 else scale.reshape(-1)
                state[f"{name}.weight_scale"] = _cpu(scale).float()
                input_scale = getattr(module, "input_scale", None)
                if input_scale is not None:  # static activation scale (ModelOpt FP8)
                    state[f"{name}.input_scale"] = _cpu(input_scale).reshape(()).float()
            state[f"{name}.weight"] = _cpu(weight).contiguous()
        elif isinstance(module, VocabParallelEmbedding):
            state[f"{name}.weight"] = _cpu(module.weight[: module.org_vocab_size]).contiguous()
        elif isinstance(module, RMSNorm):
            state[f"{name}.weight"] = _cpu(module.weight)
    return state


__all__ = ["build", "first_load", "dummy_load", "reload", "ReloadSession", "export_kernel_state",
           "quant_config_for", "quant_config_class", "spec_quant_config", "DTYPES"]
