"""The model tier: SGLang's own ``LlamaForCausalLM`` built from a ``ModelSpec``, loaded and reloaded as SGLang does.

* Build: a ``config.json`` (``LlamaConfig`` plus the checkpoint's ``quantization_config``, from
  ``loadspec.strategies.producers.quantization_config``) is written to a directory of the model's
  own; SGLang's ``ModelConfig`` reads it, ``loader._get_quantization_config`` makes the quant
  config, and ``loader._initialize_model`` builds the model under ``set_default_torch_dtype`` and
  the target device, as ``DefaultModelLoader.load_model`` does.
* First load: ``DefaultModelLoader.load_weights_and_postprocess`` (``model.load_weights`` then
  every quant method's ``process_weights_after_loading``); a directory is read by the
  ``DefaultModelLoader``'s own weight iterator.
* Dummy load: the body of ``DummyModelLoader.load_model`` after construction
  (``initialize_dummy_weights``, ``post_load_weights``, the processing loop).
* Reload: a ``WeightUpdater`` per model. A directory goes through ``update_weights_from_disk``;
  pairs and sessions through ``begin_weight_update`` / ``update_weights_from_tensor`` /
  ``end_weight_update(run_post_load=False)``, the session ``/update_weights_from_tensor`` runs.
* Export: canonical names are SGLang's module names (``model.layers.N.self_attn.{qkv_proj,o_proj,
  attn}``, ``mlp.{gate_up_proj,down_proj}``, ...).

Glue only: every load, process and reload step is an SGLang function.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from sglang.srt.configs.load_config import LoadConfig  # noqa: I001  (after the shims)
from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.layers.layernorm import RMSNorm
from sglang.srt.layers.linear import LinearBase
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.layers.vocab_parallel_embedding import VocabParallelEmbedding
from sglang.srt.model_executor.model_runner_components.weight_updater import WeightUpdater
from sglang.srt.model_loader.loader import (
    DefaultModelLoader,
    _get_quantization_config,
    _initialize_model,
    post_load_weights,
)
from sglang.srt.model_loader.utils import set_default_torch_dtype
from sglang.srt.model_loader.weight_utils import initialize_dummy_weights
from transformers import LlamaConfig

from loadspec.conformance.adapters import glue
from loadspec.conformance.adapters.glue import ExportLayout, cpu
from loadspec.conformance.adapters.sglang_engine.runtime import rope_placeholder, runtime, watch_processing
from loadspec.conformance.adapters.sglang_engine.runtime import sglang as _sglang  # noqa: F401  (shims first)
from loadspec.reference.spec import ModelSpec
from loadspec.reference.vocabulary import FLOAT_MIRRORS, SCALE_KINDS, scale_name, torch_dtype
from loadspec.strategies.producers import quantization_config
from loadspec.strategies.synthetic import hf_linears

PRODUCER_OF = {"fp8": "autofp8", "compressed-tensors": "compressed-tensors", "modelopt": "modelopt",
               "quark": "quark"}
"""``quant_method`` -> the producer whose ``config.json`` ``quantization_config`` a checkpoint of it carries."""

QUANT_CONFIG_DTYPE = "bfloat16"
"""The dtype of the ``ModelConfig`` the quant config is made for (see ``quant_config_for``)."""

UNSUPPORTED = {
    "mla": "the SGLang adapter builds LlamaForCausalLM (MHA); it does not declare mla",
    "container": "SGLang's Llama names attention 'self_attn'; the adapter does not declare mixer_container",
    "wrapper": "SGLang's LlamaForCausalLM is the outermost module; the adapter does not declare nested_wrappers",
    "fp8_per_channel": "the adapter writes one weight strategy per checkpoint (and Fp8Config and ModelOpt FP8 "
                       "cannot express per-channel weights at all); it declares neither fp8_per_channel nor "
                       "fp8_per_channel_any_format",
}


# ---------------------------------------------------------------------------------- build
def hf_config(spec: ModelSpec) -> LlamaConfig:
    """The ``config.json`` of a checkpoint of ``spec``: a Llama config with its ``quantization_config``."""
    fields: dict[str, Any] = dict(
        hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size, num_hidden_layers=len(spec.layers),
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim,
        vocab_size=spec.vocab_size, rms_norm_eps=spec.rms_norm_eps, rope_theta=spec.rope_theta,
        tie_word_embeddings=spec.tie_embeddings, max_position_embeddings=128, architectures=["LlamaForCausalLM"],
        torch_dtype=spec.params_dtype)
    config = LlamaConfig(**fields)
    if spec.quant_method is not None:
        ignored = [name for index in range(len(spec.layers))
                   for name, (_, _, scheme) in hf_linears(spec, index).items() if scheme == "none"]
        config.quantization_config = checkpoint_quantization_config(
            spec.quant_method, ignored=(*ignored, spec.lm_head_name.removesuffix(".weight")),
            activation_scheme="static" if spec.static_input_scales else "dynamic")
    return config


def checkpoint_quantization_config(quant_method: str, *, ignored=(), activation_scheme: str = "dynamic") -> dict:
    """The producer's ``quantization_config`` for ``quant_method`` (per-tensor FP8 weights, ``activation_scheme``
    activations [STATIC-1]).

    The producer table's Quark config (``strategies/producers.py``) writes the global and per-layer
    weight, input and output schemes as a Quark FP8 export does, but not ``layer_type_quant_config``,
    which an export writes empty when no layer type is special and SGLang's ``QuarkConfig`` reads
    (without it ``_find_matched_config`` raises ``TypeError: argument of type 'NoneType' is not
    iterable``), so that one is added here.
    """
    config = quantization_config(PRODUCER_OF[quant_method], weight_strategy="tensor", ignored=tuple(ignored),
                                 activation_scheme=activation_scheme)
    if quant_method == "quark":
        config.setdefault("layer_type_quant_config", {})
    return config


def unsupported(spec: ModelSpec) -> str | None:
    """Why the adapter cannot build ``spec``, or None."""
    if spec.attention != "mha":
        return UNSUPPORTED["mla"]
    if spec.container != "self_attn":
        return UNSUPPORTED["container"]
    if spec.wrapper:
        return UNSUPPORTED["wrapper"]
    if any(q == "fp8_per_channel" for layer in spec.layers for q in layer.linear_quants().values()):
        return UNSUPPORTED["fp8_per_channel"]
    return None


def quant_config_for(directory: str, load_config: LoadConfig):
    """SGLang's quant config for the checkpoint in ``directory``, made by ``_get_quantization_config``.

    It is made for a bf16 ``ModelConfig`` of the same ``config.json``: SGLang refuses float32 with
    every FP8 method (``get_supported_act_dtypes``), while the suite's models are float32 by
    default. The config object itself does not depend on the dtype.
    """
    return _get_quantization_config(ModelConfig(model_path=directory, dtype=QUANT_CONFIG_DTYPE), load_config)


def build(spec: ModelSpec, *, device: str = "cpu") -> torch.nn.Module:
    """SGLang's ``LlamaForCausalLM`` of ``spec`` (built as ``DefaultModelLoader.load_model`` does) and its updater."""
    reason = unsupported(spec)
    if reason is not None:
        raise NotImplementedError(reason)
    runtime()
    directory = tempfile.TemporaryDirectory(prefix="loadspec-sglang-")
    hf_config(spec).save_pretrained(directory.name)
    model_config = ModelConfig(model_path=directory.name, dtype=spec.params_dtype)
    load_config = LoadConfig()
    quant_config = quant_config_for(directory.name, load_config) if spec.quant_method else None
    with set_default_torch_dtype(torch_dtype(spec.params_dtype)), torch.device(device), rope_placeholder():
        model = _initialize_model(model_config, load_config, quant_config)
    model.loadspec_directory = directory  # the config.json stays readable while the model lives
    model.loadspec_spec = spec
    model.loadspec_device = device
    model.loadspec_model_config = model_config
    model.loadspec_updater = WeightUpdater(
        tp_rank=0, device=device, gpu_id=0, model_config=model_config, custom_weight_loaders={},
        get_model=lambda: model, update_model_fields=lambda *args, **kwargs: None,
        recapture_cuda_graph=lambda: None, get_model_runner=lambda: None)
    watch_processing(model)
    return model


def _dtype_scope(model):
    return set_default_torch_dtype(torch_dtype(model.loadspec_spec.params_dtype))


def _target(model) -> torch.device:
    return torch.device(model.loadspec_device)


def weights_of(model, source):
    """``source`` itself, or the ``DefaultModelLoader``'s weight iterator over the checkpoint directory it names."""
    if not isinstance(source, (str, Path)):
        return source
    model_config = model.loadspec_model_config
    model_config.model_path = str(source)
    return DefaultModelLoader(LoadConfig())._get_all_weights(model_config, model)


# ---------------------------------------------------------------------------- lifecycle
def first_load(model, source) -> set[str]:
    """``DefaultModelLoader.load_weights_and_postprocess``; SGLang's loader returns no names, so neither does this."""
    model.loadspec_events = []
    with _dtype_scope(model):
        DefaultModelLoader.load_weights_and_postprocess(model, weights_of(model, source), _target(model))
    return set()


def dummy_load(model) -> None:
    """``initialize_dummy_weights``, ``post_load_weights``, the processing loop (``DummyModelLoader.load_model``)."""
    model.loadspec_events = []
    with _dtype_scope(model), torch.device(model.loadspec_device):
        initialize_dummy_weights(model)
        post_load_weights(model)
        for _, module in model.named_modules():
            quant_method = getattr(module, "quant_method", None)
            if quant_method is not None:
                quant_method.process_weights_after_loading(module)


class WeightUpdateRejected(RuntimeError):
    """``WeightUpdater.update_weights_from_disk`` answered ``(False, message)``: SGLang's rejection, as raised here."""


def reload(model, source) -> None:
    """A directory: ``update_weights_from_disk(path, "auto")``; pairs: one tensor session (``ReloadSession``)."""
    if isinstance(source, (str, Path)):
        model.loadspec_events = []
        ok, message = model.loadspec_updater.update_weights_from_disk(str(source), "auto")
        if not ok:
            raise WeightUpdateRejected(message)
        return
    session = ReloadSession(model)
    session.load(source)
    session.finish()


class ReloadSession:
    """``begin_weight_update``; ``update_weights_from_tensor`` per load; ``end_weight_update(run_post_load=False)``."""

    def __init__(self, model) -> None:
        self.model = model
        model.loadspec_events = []
        with _dtype_scope(model):
            model.loadspec_updater.begin_weight_update()

    def load(self, weights) -> None:
        with _dtype_scope(self.model):
            ok, message = self.model.loadspec_updater.update_weights_from_tensor(list(weights))
        if not ok:
            raise WeightUpdateRejected(message)

    def finish(self) -> None:
        with _dtype_scope(self.model):
            self.model.loadspec_updater.end_weight_update(run_post_load=False)


# ------------------------------------------------------------------------------- export
UNIT = 1.0
"""What SGLang's attention applies for a scale it has no tensor for: none (q, prob; k and v without a KV method)."""


def attention_scales(module: RadixAttention) -> dict[str, torch.Tensor]:
    """``q/k/v/prob_scale`` as SGLang's attention uses them: the ``k_scale``/``v_scale`` tensors, else 1.0."""
    out = {}
    for kind in SCALE_KINDS:
        tensor = getattr(module, scale_name(kind), None) if kind in ("k", "v") else None
        out[scale_name(kind)] = (cpu(tensor).reshape(()).float() if isinstance(tensor, torch.Tensor)
                                 else torch.tensor(UNIT, dtype=torch.float32))
    return out


def attention_mirrors(module: RadixAttention) -> dict[str, float]:
    """SGLang's host copies ``k_scale_float``/``v_scale_float`` (``q_scale_float`` is never set), once set."""
    out = {}
    for kind in ("q", "k", "v"):
        value = getattr(module, f"{kind}_scale_float", None)
        if value is not None:
            out[FLOAT_MIRRORS[scale_name(kind)]] = float(value)
    return out


def _transposed(module: LinearBase, weight: torch.Tensor) -> bool:
    """Processing keeps the FP8 weight as an (in, out) view of its (out, in) storage (``Parameter(weight.t())``).

    Decided by the shape against the module's ``(output_size, input_size)`` (one rank); only a square
    weight needs its strides. ``is_contiguous()`` cannot tell: a view with a size-1 dimension is
    contiguous either way, so a (6, 1) weight held as a (1, 6) view was exported untransposed.
    """
    if weight.dim() != 2:
        return False
    out_in = (module.output_size, module.input_size)
    if out_in[0] != out_in[1]:
        return tuple(weight.shape) == out_in[::-1]
    return out_in[0] > 1 and weight.stride() == (1, out_in[0])


def _input_scale(module: LinearBase) -> torch.Tensor | None:
    """The static activation scale (ModelOpt FP8), its largest value."""
    input_scale = getattr(module, "input_scale", None)
    return input_scale.max() if isinstance(input_scale, torch.Tensor) else None


EXPORT = ExportLayout(attention=RadixAttention, attention_scales=attention_scales, linear=LinearBase,
                      transposed=_transposed, input_scale=_input_scale, embedding=VocabParallelEmbedding,
                      norm=RMSNorm, remove_duplicate=False)
"""SGLang's canonical export: modules walked with tied ones under each name."""


def export_kernel_state(model) -> dict[str, torch.Tensor]:
    """SGLang's kernel tensors in the canonical names and layouts.

    FP8 linears: weight ``[out, in]``, a per-tensor scale as ``()``. Attention: ``attention_scales``.
    Embedding and ``lm_head`` (the same module when tied): the first ``vocab_size`` rows.
    """
    return glue.export_kernel_state(model, EXPORT)


def kernel_tensors(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name, tied modules under each of their names."""
    return glue.kernel_tensors(model, remove_duplicate=False)


def host_mirrors(model) -> dict[str, float]:
    return glue.host_mirrors(model, RadixAttention, attention_mirrors)


__all__ = ["build", "first_load", "dummy_load", "reload", "ReloadSession", "WeightUpdateRejected",
           "export_kernel_state", "kernel_tensors", "host_mirrors", "attention_scales", "attention_mirrors",
           "hf_config", "checkpoint_quantization_config", "unsupported", "UNSUPPORTED", "PRODUCER_OF"]
