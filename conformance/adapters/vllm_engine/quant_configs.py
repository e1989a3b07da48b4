"""vLLM's quantization config objects for a checkpoint, made by each config class's own ``from_config``.

The ``quantization_config`` dicts describe what the suite's checkpoints hold: which linears
are FP8 and how, which are unquantized (in the ignore list, with ``lm_head``), static or
dynamic activations (``ModelSpec.static_input_scales`` [STATIC-1]), and static FP8 KV-cache
scales per tensor or per head (``ModelSpec.kv_scale_strategy`` [HEADS-1]) [NAMES-1..8,
KVPROC-2..9]. A checkpoint's own ``quantization_config`` (E2E, ``--checkpoint``) is passed to
``from_config`` as it is, inside ``checkpoint_quantization_config``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import CompressedTensorsConfig
from vllm.model_executor.layers.quantization.fp8 import Fp8Config
from vllm.model_executor.layers.quantization.modelopt import ModelOptFp8Config
from vllm.model_executor.layers.quantization.quark.quark import QuarkConfig

from loadspec.reference.spec import ModelSpec
from loadspec.reference.vocabulary import PER_CHANNEL_METHODS
from loadspec.strategies.synthetic import hf_linears

CONFIG_CLASSES = {"fp8": Fp8Config, "compressed-tensors": CompressedTensorsConfig, "modelopt": ModelOptFp8Config,
                  "quark": QuarkConfig}
"""``quant_method`` -> vLLM's config class (one per ``vocabulary.QUANT_METHODS``)."""

KV_SCHEME = {"type": "float", "num_bits": 8, "strategy": "tensor", "symmetric": True, "dynamic": False}


def quant_config_class(quant_method: str | None) -> type[QuantizationConfig]:
    """vLLM's config class for a checkpoint's ``quant_method`` (the base class for none)."""
    if not quant_method:
        return QuantizationConfig
    try:
        return CONFIG_CLASSES[quant_method]
    except KeyError:
        raise ValueError(f"quant_method={quant_method!r} has no vLLM config in this adapter") from None


def _compressed_tensors(per_tensor: list[str], per_channel: list[str], ignored: list[str], *, static: bool,
                        kv_strategy: str) -> dict:
    groups = {}
    inputs = ({"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True} if static
              else {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True, "symmetric": True})
    for group, names, strategy in (("fp8_tensor", per_tensor, "tensor"), ("fp8_channel", per_channel, "channel")):
        if names:
            groups[group] = {
                "targets": names,
                "weights": {"num_bits": 8, "type": "float", "strategy": strategy, "dynamic": False,
                            "symmetric": True},
                "input_activations": dict(inputs)}
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": groups,
            "ignore": ignored, "kv_cache_scheme": dict(KV_SCHEME, strategy=kv_strategy)}


def _quark(per_channel: list[str], ignored: list[str], *, static: bool) -> dict:
    def weight(strategy):
        return {"dtype": "fp8_e4m3", "qscheme": f"per_{strategy}", "is_dynamic": False, "symmetric": True,
                **({"ch_axis": 0} if strategy == "channel" else {})}

    dynamic_input = {"dtype": "fp8_e4m3", "qscheme": "per_tensor", "is_dynamic": not static, "symmetric": True}
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
            "layer_quant_config": layers, "layer_type_quant_config": {}, "exclude": ignored}


def quantization_config_dict(quant_method: str, linear_schemes: dict[str, str], ignored, *,
                             activation_scheme: str = "dynamic", kv_strategy: str = "tensor") -> dict:
    """The ``config.json`` ``quantization_config`` a producer of ``quant_method`` writes for these linears.

    ``linear_schemes`` maps checkpoint linear names to ``fp8_per_tensor``/``fp8_per_channel``;
    ``ignored`` lists the unquantized ones. FP8 activations are ``activation_scheme``: dynamic
    (no ``input_scale``) or static (every FP8 linear has one) [STATIC-1]; ModelOpt ``FP8`` is
    always static W8A8. ``kv_strategy`` is compressed-tensors' ``kv_cache_scheme.strategy``
    (``tensor`` or ``attn_head`` [HEADS-1]).
    """
    static = activation_scheme == "static"
    per_tensor = [n for n, s in linear_schemes.items() if s == "fp8_per_tensor"]
    per_channel = [n for n, s in linear_schemes.items() if s == "fp8_per_channel"]
    ignored = list(ignored)
    if quant_method not in PER_CHANNEL_METHODS and per_channel:
        raise NotImplementedError(
            f"vLLM's {quant_config_class(quant_method).__name__} has no per-channel FP8 linear scheme "
            f"({per_channel[0]} is fp8_per_channel); the vLLM adapter does not declare fp8_per_channel_any_format")
    if quant_method == "fp8":
        return {"quant_method": "fp8", "activation_scheme": activation_scheme, "ignored_layers": ignored}
    if quant_method == "modelopt":
        return {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8",
                "exclude_modules": ignored}
    if quant_method == "compressed-tensors":
        return _compressed_tensors(per_tensor, per_channel, ignored, static=static, kv_strategy=kv_strategy)
    if quant_method == "quark":
        return _quark(per_channel, ignored, static=static)
    raise ValueError(f"quant_method={quant_method!r} has no vLLM config in this adapter")


def quant_config_for(quant_method: str | None, linear_schemes: dict[str, str], ignored, *,
                     activation_scheme: str = "dynamic", kv_strategy: str = "tensor") -> QuantizationConfig | None:
    """vLLM's quantization config object for a checkpoint, made by the config class's own ``from_config``."""
    if not quant_method:
        return None
    return quant_config_class(quant_method).from_config(quantization_config_dict(
        quant_method, linear_schemes, ignored, activation_scheme=activation_scheme, kv_strategy=kv_strategy))


def primitive_quant_config(quant_method: str | None) -> QuantizationConfig | None:
    """The config ``auto_load`` attaches for ``quant_method``: KV-cache scales only, no FP8 linears [NAMES-10]."""
    return quant_config_for(quant_method, linear_schemes={}, ignored=())


_CHECKPOINT_QCONFIG: ContextVar[dict | None] = ContextVar("loadspec_vllm_checkpoint_qconfig", default=None)


@contextlib.contextmanager
def checkpoint_quantization_config(qconfig: dict | None) -> Iterator[None]:
    """Within the block, models are built from this checkpoint's own ``quantization_config`` (passed to the vLLM
    config class's ``from_config`` as it is), not from one made up for the spec; ``None`` changes nothing."""
    token = _CHECKPOINT_QCONFIG.set(dict(qconfig) if qconfig else None)
    try:
        yield
    finally:
        _CHECKPOINT_QCONFIG.reset(token)


def spec_quant_config(spec: ModelSpec) -> QuantizationConfig | None:
    """The quantization config a checkpoint of ``spec`` declares: the checkpoint's own inside
    ``checkpoint_quantization_config``, else one written for the spec's linears."""
    if spec.quant_method is None:
        return None
    own = _CHECKPOINT_QCONFIG.get()
    if own is not None:
        if own.get("quant_method", "modelopt" if "quantization" in own else None) != spec.quant_method:
            raise ValueError(f"the checkpoint's quant_method={own.get('quant_method')!r}, but the spec's is "
                             f"{spec.quant_method!r}")
        return quant_config_class(spec.quant_method).from_config(with_head_counts(own, spec))
    schemes, ignored = {}, []
    for index in range(len(spec.layers)):
        for name, (_, _, scheme) in hf_linears(spec, index).items():
            if scheme == "none":
                ignored.append(name)
            else:
                schemes[name] = scheme
    ignored.append(spec.lm_head_name.removesuffix(".weight"))
    config = quantization_config_dict(spec.quant_method, schemes, ignored,
                                      activation_scheme="static" if spec.static_input_scales else "dynamic",
                                      kv_strategy=spec.kv_scale_strategy)
    return quant_config_class(spec.quant_method).from_config(with_head_counts(config, spec))


def with_head_counts(config: dict, spec: ModelSpec) -> dict:
    """``config`` with the head counts vLLM's ``get_quant_config`` adds to a compressed-tensors config before
    ``from_config`` (``model_loader/weight_utils.py``: ``total_num_heads``/``total_num_kv_heads``, read by
    ``CompressedTensorsKVCacheMethod``'s TP-aware ``attn_head`` loader) [HEADS-1]."""
    if config.get("quant_method") != "compressed-tensors" or "config_groups" not in config:
        return config
    return dict(config, total_num_heads=spec.num_heads, total_num_kv_heads=spec.num_kv_heads)


__all__ = ["CONFIG_CLASSES", "quant_config_class", "quantization_config_dict", "quant_config_for",
           "primitive_quant_config", "spec_quant_config", "checkpoint_quantization_config", "with_head_counts"]
