"""vLLM's quantization config objects for a checkpoint, made by each config class's own ``from_config``.

The ``quantization_config`` dicts describe what the suite's checkpoints hold: which linears
are FP8 and how, which are unquantized (in the ignore list, with ``lm_head``), and static
per-tensor FP8 KV-cache scales [NAMES-1..8, KVPROC-2..9].
"""

from __future__ import annotations

from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import CompressedTensorsConfig
from vllm.model_executor.layers.quantization.fp8 import Fp8Config
from vllm.model_executor.layers.quantization.modelopt import ModelOptFp8Config
from vllm.model_executor.layers.quantization.quark.quark import QuarkConfig

from loadspec.reference.spec import ModelSpec
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


def _compressed_tensors(per_tensor: list[str], per_channel: list[str], ignored: list[str]) -> dict:
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
            "ignore": ignored, "kv_cache_scheme": dict(KV_SCHEME)}


def _quark(per_channel: list[str], ignored: list[str]) -> dict:
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
            "layer_quant_config": layers, "layer_type_quant_config": {}, "exclude": ignored}


def quantization_config_dict(quant_method: str, linear_schemes: dict[str, str], ignored) -> dict:
    """The ``config.json`` ``quantization_config`` a producer of ``quant_method`` writes for these linears.

    ``linear_schemes`` maps checkpoint linear names to ``fp8_per_tensor``/``fp8_per_channel``;
    ``ignored`` lists the unquantized ones. FP8 activations are dynamic (the checkpoints
    carry no ``input_scale``), except where the format has no dynamic variant (ModelOpt
    ``FP8`` is static W8A8).
    """
    per_tensor = [n for n, s in linear_schemes.items() if s == "fp8_per_tensor"]
    per_channel = [n for n, s in linear_schemes.items() if s == "fp8_per_channel"]
    ignored = list(ignored)
    if quant_method in ("fp8", "modelopt") and per_channel:
        raise NotImplementedError(
            f"vLLM's {quant_config_class(quant_method).__name__} has no per-channel FP8 linear scheme "
            f"({per_channel[0]} is fp8_per_channel); the vLLM adapter does not declare fp8_per_channel")
    if quant_method == "fp8":
        return {"quant_method": "fp8", "activation_scheme": "dynamic", "ignored_layers": ignored}
    if quant_method == "modelopt":
        return {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8",
                "exclude_modules": ignored}
    if quant_method == "compressed-tensors":
        return _compressed_tensors(per_tensor, per_channel, ignored)
    if quant_method == "quark":
        return _quark(per_channel, ignored)
    raise ValueError(f"quant_method={quant_method!r} has no vLLM config in this adapter")


def quant_config_for(quant_method: str | None, linear_schemes: dict[str, str], ignored) -> QuantizationConfig | None:
    """vLLM's quantization config object for a checkpoint, made by the config class's own ``from_config``."""
    if not quant_method:
        return None
    return quant_config_class(quant_method).from_config(
        quantization_config_dict(quant_method, linear_schemes, ignored))


def primitive_quant_config(quant_method: str | None) -> QuantizationConfig | None:
    """The config ``auto_load`` attaches for ``quant_method``: KV-cache scales only, no FP8 linears [NAMES-10]."""
    return quant_config_for(quant_method, linear_schemes={}, ignored=())


def spec_quant_config(spec: ModelSpec) -> QuantizationConfig | None:
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


__all__ = ["CONFIG_CLASSES", "quant_config_class", "quantization_config_dict", "quant_config_for",
           "primitive_quant_config", "spec_quant_config"]
