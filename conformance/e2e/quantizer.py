"""The E2E producer: FP8 (e4m3) quantization of a float HF Llama checkpoint, KV scales calibrated on real activations.

``quantize_checkpoint`` writes FP8 q/k/v/o/gate/up/down weights (per-tensor or per-output-row
scales, ``amax/448``, from ``strategies.producers.quantize_weight``) under HF's unfused names,
KV-cache scales in the layout of one producer of ``strategies.producers``, and ``config.json``
with that producer's ``quantization_config``. The compressed-tensors layouts mirror what
llm-compressor 0.14.0.1 / compressed-tensors 0.19.0 write (``reports/e2e/real-tools/*.json``,
``make real-checkpoints``): weight scales in the model's dtype, per-tensor ones of shape
``(1,)``, per-channel ones ``(out, 1)`` (Quark ``(out,)``), k/v scales only (no ``q_scale``).
Calibration runs ``forward`` over the float model as the reference loader loads it: there is
no second loader here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from loadspec.conformance.e2e.forward import FUSED_PROJS, forward_logits, linear_name, spec_from_hf_config
from loadspec.conformance.e2e.scales import hf_projection
from loadspec.reference import api
from loadspec.reference.checkpoint import iter_checkpoint, read_config
from loadspec.reference.spec import ModelSpec
from loadspec.reference.vocabulary import (
    ACTIVATION_SCHEMES,
    FORMAT_ACTIVATION_SCHEMES,
    FP8_MAX,
    PARAM_DTYPES,
    TORCH_DTYPES,
)
from loadspec.strategies.producers import PRODUCERS, WEIGHT_STRATEGIES, quantization_config, quantize_weight
from loadspec.strategies.synthetic import kv_scale_tensors

DEFAULT_CALIBRATION_TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Paris is the capital and largest city of France, with about two million residents. "
    "Water boils at one hundred degrees Celsius at sea level. "
    "In 1969, Neil Armstrong became the first person to walk on the Moon. "
    "Photosynthesis turns light energy into chemical energy stored in sugar. "
    "She opened the window, and the cool morning air filled the quiet room."
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json")


def float_kernel_state(tensors: dict[str, torch.Tensor], spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The kernel state of a float checkpoint as the reference loader first-loads it [LOAD-3]."""
    model = api.build(spec.with_(quant_method=None, kv_cache_dtype="auto"))
    api.first_load(model, tensors.items())
    return api.export(model)


# ------------------------------------------------------------------ calibration
def calibrate_kv_scales(state: dict, spec: ModelSpec, tokenizer, *,
                        calibration_text: str = DEFAULT_CALIBRATION_TEXT) -> list[tuple[float, float]]:
    """Per layer ``(k_scale, v_scale)`` = amax of post-RoPE K and of V over the text, divided by 448.

    ``state`` is a kernel state (float or FP8 weights); the forward runs with an unquantized cache.
    """
    amax = [[0.0, 0.0] for _ in spec.layers]

    def observe(layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        amax[layer][0] = max(amax[layer][0], float(k.abs().amax()))
        amax[layer][1] = max(amax[layer][1], float(v.abs().amax()))

    forward_logits(state, spec, tokenizer(calibration_text)["input_ids"], kv_cache_dtype="auto", kv_observer=observe)
    return [(k / FP8_MAX, v / FP8_MAX) for k, v in amax]


def calibrate_q_scales(state: dict, spec: ModelSpec, tokenizer, *,
                       calibration_text: str = DEFAULT_CALIBRATION_TEXT) -> list[float]:
    """Per layer the amax of post-RoPE Q over the text, divided by 448: the FP8-attention ``q_scale``
    TensorRT-Edge-LLM exports (``_collect_attention_q_scales_for_export``: Q-BMM amax / maxbound) [NAMES-15]."""
    amax = [0.0 for _ in spec.layers]

    def observe(layer: int, q: torch.Tensor) -> None:
        amax[layer] = max(amax[layer], float(q.abs().amax()))

    forward_logits(state, spec, tokenizer(calibration_text)["input_ids"], kv_cache_dtype="auto", q_observer=observe)
    return [q / FP8_MAX for q in amax]


def calibrate_input_scales(state: dict, spec: ModelSpec, tokenizer, *,
                           calibration_text: str = DEFAULT_CALIBRATION_TEXT) -> dict[str, float]:
    """Static activation scales: kernel linear name -> amax of its input over the text, divided by 448."""
    amax: dict[str, float] = {}

    def observe(name: str, x: torch.Tensor) -> None:
        amax[name] = max(amax.get(name, 0.0), float(x.abs().amax()))

    forward_logits(state, spec, tokenizer(calibration_text)["input_ids"], kv_cache_dtype="auto",
                   linear_observer=observe)
    return {name: value / FP8_MAX for name, value in amax.items()}


def quantize_checkpoint(src_dir: str | Path, dst_dir: str | Path, *, producer_id: str,
                        weight_strategy: str = "tensor", calibration_text: str = DEFAULT_CALIBRATION_TEXT,
                        scale_multiplier: float = 1.0, tokenizer=None, activation_scheme: str | None = None) -> dict:
    """Write an FP8 copy of HF Llama checkpoint ``src_dir`` into ``dst_dir`` in ``producer_id``'s layout.

    KV scales are calibrated on ``calibration_text`` and multiplied by ``scale_multiplier``
    before writing; ``tokenizer`` defaults to ``src_dir``'s. ``activation_scheme`` ``"static"``
    writes static W8A8 (a calibrated ``input_scale`` per FP8 linear and the producer's static
    config, as llm-compressor's ``FP8`` preset does) [STATIC-1]; ``None`` is the format's own
    (ModelOpt static, the others dynamic). Returns ``{"kv_scales": [(k, v), ...] (as written),
    "names": [...]}``.
    """
    from safetensors.torch import save_file

    if producer_id not in PRODUCERS:
        raise ValueError(f"producer_id={producer_id!r}, but should be one of {sorted(PRODUCERS)}")
    if weight_strategy not in WEIGHT_STRATEGIES:
        raise ValueError(f"weight_strategy={weight_strategy!r}, but should be one of {WEIGHT_STRATEGIES}")
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    config, hf_state = read_config(src_dir), dict(iter_checkpoint(src_dir))
    if config.get("quantization_config"):
        raise ValueError(f"{src_dir} is already quantized "
                         f"({config['quantization_config'].get('quant_method')!r}); give a float checkpoint")
    spec = spec_from_hf_config(config, linear_quant="none", kv_cache_dtype="auto")
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(src_dir))
    float_state = float_kernel_state(hf_state, spec)
    calibrated = calibrate_kv_scales(float_state, spec, tokenizer, calibration_text=calibration_text)
    scales = [(k * scale_multiplier, v * scale_multiplier) for k, v in calibrated]

    producer = PRODUCERS[producer_id]
    model_dtype = hf_state["model.embed_tokens.weight"].dtype
    compressed_tensors = producer.quant_method == "compressed-tensors"
    per_tensor_shape = (1,) if compressed_tensors else ()
    # compressed-tensors 0.19.0 (llm-compressor 0.14.0.1) writes weight and input scales in the model's dtype
    # (BF16 in a bf16 model), per-tensor ones of shape (1,); the others write float32 (reports/e2e/real-tools/).
    linear_scale_dtype = model_dtype if compressed_tensors else torch.float32
    activation_scheme = activation_scheme or FORMAT_ACTIVATION_SCHEMES.get(producer.quant_method, "dynamic")
    if activation_scheme not in ACTIVATION_SCHEMES:
        raise ValueError(f"activation_scheme={activation_scheme!r}, but should be one of {ACTIVATION_SCHEMES}")
    input_scales = (calibrate_input_scales(float_state, spec, tokenizer, calibration_text=calibration_text)
                    if activation_scheme == "static" else {})
    input_scale_of = {f"{hf_projection(i, proj)}.weight": input_scales[linear_name(spec, i, fused)]
                      for i in range(len(spec.layers)) for fused, projs in FUSED_PROJS.items() for proj in projs
                      if input_scales}
    out: dict[str, torch.Tensor] = {}
    proj_names = {f"{hf_projection(i, p)}.weight" for i in range(len(spec.layers))
                  for projs in FUSED_PROJS.values() for p in projs}
    for name, tensor in hf_state.items():
        if name not in proj_names:
            out[name] = tensor.contiguous()
            continue
        weight, scale = quantize_weight(tensor, strategy=weight_strategy)
        out[name] = weight.contiguous()
        scale = scale.reshape(per_tensor_shape) if weight_strategy == "tensor" else producer.channel_scale(scale)
        out[name[: -len("weight")] + "weight_scale"] = scale.to(linear_scale_dtype).contiguous()
        if name in input_scale_of:
            out[name[: -len("weight")] + "input_scale"] = torch.tensor(
                input_scale_of[name], dtype=linear_scale_dtype).reshape(per_tensor_shape)
    dtype_name = {TORCH_DTYPES[name]: name for name in PARAM_DTYPES}[model_dtype]
    layout = spec.with_(quant_method=producer.quant_method, params_dtype=dtype_name)
    # A compressed-tensors kv_cache_scheme writes k_scale and v_scale only (no q_scale: that needs attention
    # quantization); the other layouts get q/prob at 1.0 where their names exist, but FP8-attention exports
    # calibrate q (Producer.calibrated_q).
    uncalibrated = {} if compressed_tensors else {"q": 1.0, "prob": 1.0}
    q_scales = (calibrate_q_scales(float_state, spec, tokenizer, calibration_text=calibration_text)
                if producer.calibrated_q else None)
    for index, (k, v) in enumerate(scales):
        values: dict[str, float | None] = {"k": k, "v": v, **uncalibrated}
        if q_scales:
            values["q"] = q_scales[index]
        out.update(kv_scale_tensors(layout, index, producer=producer_id, kv_scales=values))

    dst_dir.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst_dir / "model.safetensors"), metadata={"format": "pt"})
    config = dict(config, quantization_config=quantization_config(
        producer_id, weight_strategy=weight_strategy, ignored=("lm_head",), activation_scheme=activation_scheme))
    (dst_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    for file in TOKENIZER_FILES:
        if (src_dir / file).is_file():
            shutil.copyfile(src_dir / file, dst_dir / file)
    return {"kv_scales": scales, "names": sorted(out)}


__all__ = ["quantize_checkpoint", "calibrate_kv_scales", "calibrate_q_scales", "calibrate_input_scales",
           "float_kernel_state", "hf_projection", "DEFAULT_CALIBRATION_TEXT", "TOKENIZER_FILES"]
