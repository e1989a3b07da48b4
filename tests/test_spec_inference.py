"""Spec inference from the real config (issue 10 item 2): ``conformance/e2e/spec_inference.py``.

The fixtures are what llm-compressor 0.14.0.1 / compressed-tensors 0.19.0 wrote on this machine
(``make real-checkpoints`` records them in ``reports/e2e/real-tools/<recipe>.json``: the exact
``quantization_config`` and ``dtype`` of ``config.json`` and every tensor pattern), plus the
configs of the other formats as their tools write them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loadspec.conformance.check import check
from loadspec.conformance.e2e import forward
from loadspec.conformance.e2e.checkpoints import CheckpointError, inspect_checkpoint, spec_for
from loadspec.conformance.e2e.spec_inference import HF_QUANT_CONFIG, Scheme, SchemeError, infer_scheme, read_scheme
from loadspec.reference.spec import ModelSpec
from loadspec.strategies.producers import PRODUCERS, quantization_config

REAL = Path(__file__).resolve().parents[1] / "reports" / "e2e" / "real-tools"
TINY = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 256,
        "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}


def real(recipe: str) -> dict:
    """``config.json`` fields the real tool wrote for ``recipe``."""
    return json.loads((REAL / f"{recipe}.json").read_text())["config"]


@pytest.mark.parametrize("recipe, expected", [
    ("fp8-static-tensor", Scheme("compressed-tensors", "fp8_per_tensor", "static", "tensor", ("lm_head",), "float32")),
    ("fp8-static-attn-head",
     Scheme("compressed-tensors", "fp8_per_tensor", "static", "attn_head", ("lm_head",), "float32")),
    ("fp8-dynamic-channel-bf16",
     Scheme("compressed-tensors", "fp8_per_channel", "dynamic", "tensor", ("lm_head",), "bfloat16")),
])
def test_real_llmcompressor_configs(recipe, expected):
    assert infer_scheme(real(recipe)) == expected


def test_the_dtype_decides_the_built_model():
    """A bf16 checkpoint is built in bf16, never in fp32; transformers 4 spelled it ``torch_dtype``."""
    config = dict(TINY, **real("fp8-dynamic-channel-bf16"))
    assert forward.spec_from_hf_config(config).params_dtype == "bfloat16"
    old = {k: v for k, v in config.items() if k != "dtype"} | {"torch_dtype": "float16"}
    assert infer_scheme(old).params_dtype == "float16"
    assert forward.spec_from_hf_config(old).params_dtype == "float16"
    assert infer_scheme(TINY).params_dtype == "float32"
    with pytest.raises(SchemeError, match=r"dtype 'int8'"):
        infer_scheme(dict(TINY, dtype="int8"))


def test_every_unknown_or_unsupported_field_in_one_error():
    q = copy.deepcopy(real("fp8-static-tensor")["quantization_config"])
    group = q["config_groups"]["group_0"]
    group["weights"]["strategy"] = "group"
    group["weights"]["group_size"] = 128
    group["input_activations"]["strategy"] = "token"  # static per-token does not exist
    group["frobnicate"] = True
    q["kv_cache_scheme"]["dynamic"] = True
    q["ignore"] = ["lm_head", "model.layers.0.mlp.down_proj"]
    q["sparsity_config"] = {"format": "sparse-24"}
    with pytest.raises(SchemeError) as info:
        infer_scheme({"quantization_config": q})
    problems = info.value.problems
    for needle in ("weights.strategy='group'", "weights.group_size=128", "input_activations.strategy='token'",
                   "group_0.frobnicate: unknown field", "kv_cache_scheme.dynamic=True", "down_proj",
                   "sparsity_config"):
        assert sum(needle in p for p in problems) == 1, (needle, problems)
    assert len(problems) == 7, problems


@pytest.mark.parametrize("qconfig, expected", [
    ({"quant_method": "fp8", "activation_scheme": "static", "ignored_layers": ["lm_head"]},
     Scheme("fp8", "fp8_per_tensor", "static", "tensor", ("lm_head",))),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, Scheme("fp8", "fp8_per_tensor", "dynamic", "tensor")),
    ({"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head"]},
     Scheme("modelopt", "fp8_per_tensor", "static", "tensor", ("lm_head",))),
    ({"quant_method": "modelopt", "quant_algo": "FP8"}, Scheme("modelopt", "fp8_per_tensor", "static", None)),
    (dict(quantization_config("quark"), global_quant_config={
        "weight": {"dtype": "fp8_e4m3", "qscheme": "per_tensor", "is_dynamic": False},
        "input_tensors": {"dtype": "fp8_e4m3", "qscheme": "per_tensor", "is_dynamic": False},
        "output_tensors": None}), Scheme("quark", "fp8_per_tensor", "static", "tensor")),
], ids=["autofp8-static", "fp8-dynamic", "modelopt", "modelopt-no-kv", "quark-static"])
def test_other_formats(qconfig, expected):
    assert infer_scheme({"quantization_config": qconfig}) == expected


@pytest.mark.parametrize("producer", sorted(PRODUCERS))
def test_every_fixture_config_is_read(producer):
    scheme = infer_scheme({"quantization_config": quantization_config(producer, ignored=("lm_head",))})
    assert scheme.quant_method == PRODUCERS[producer].quant_method and scheme.kv_cache_strategy == "tensor"


def test_modelopt_hf_quant_config_json(tmp_path):
    """vLLM's ModelOptFp8Config reads hf_quant_config.json when config.json has no quantization_config."""
    (tmp_path / HF_QUANT_CONFIG).write_text(json.dumps({
        "producer": {"name": "modelopt", "version": "0.19.0"},
        "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head"]}}))
    scheme = read_scheme(tmp_path, TINY)
    assert scheme == Scheme("modelopt", "fp8_per_tensor", "static", "tensor", ("lm_head",), source=HF_QUANT_CONFIG)
    (tmp_path / HF_QUANT_CONFIG).write_text(json.dumps({"quantization": {"quant_algo": "NVFP4"}}))
    with pytest.raises(SchemeError, match="NVFP4"):
        read_scheme(tmp_path, TINY)


def test_unknown_quant_method():
    with pytest.raises(SchemeError, match=r"quant_method='gptq'"):
        infer_scheme({"quantization_config": {"quant_method": "gptq", "bits": 4}})


# ------------------------------------------------------------------ through the checkpoint inspection and the check
def tiny_real_layout(path: Path, recipe: str, *, drop: tuple[str, ...] = (), heads: int = 2) -> Path:
    """A two-layer checkpoint with the real tool's config and scale tensors (names, shapes, dtypes as recorded)."""
    written = real(recipe)
    config = dict(TINY, quantization_config=written["quantization_config"], dtype=written["dtype"])
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[config["dtype"]]
    tensors: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.zeros(256, 64, dtype=dtype)}
    patterns = json.loads((REAL / f"{recipe}.json").read_text())["tensors"]
    for entry in patterns:
        if not entry["name"].endswith(("_scale", "input_scale")):
            continue
        for index in range(2):
            name = entry["name"].replace("layers.N.", f"layers.{index}.")
            shape = [heads if s == 3 and name.endswith(("k_scale", "v_scale")) else s for s in entry["shape"]]
            assert name.endswith(("k_scale", "v_scale")) or shape in ([1], [1, 1]) or len(shape) == 2, shape
            if name.endswith("weight_scale") and len(shape) == 2:
                continue  # per-channel weight scales need their weights' rows: not needed for the KV/input checks
            value = 0.5 if name.endswith(("k_scale", "v_scale")) else 0.01
            tensors[name] = torch.full(shape, value, dtype={"F32": torch.float32, "BF16": torch.bfloat16}[
                entry["dtype"]])
    for name in drop:
        del tensors[name]
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(path / "model.safetensors"))
    return path


def _spec_has(*names: str) -> bool:
    return set(names) <= {f.name for f in dataclasses.fields(ModelSpec)}


@pytest.mark.parametrize("recipe", ["fp8-static-tensor", "fp8-static-attn-head"])
def test_inspection_reads_the_real_layouts(tmp_path, recipe):
    if not _spec_has("activation_scheme", "kv_scale_strategy"):
        pytest.skip("this tree's ModelSpec has no activation_scheme/kv_scale_strategy (issue 10 part B)")
    info = inspect_checkpoint(tiny_real_layout(tmp_path, recipe))
    per_head = recipe.endswith("attn-head")
    assert info.scheme is not None and info.scheme.static_inputs
    assert info.kv_scales[1] == (((0.5, 0.5), (0.5, 0.5)) if per_head else (0.5, 0.5))
    spec = spec_for(info)
    assert spec.params_dtype == "float32" and spec.quant_method == "compressed-tensors"


def test_inspection_lists_every_problem_at_once(tmp_path):
    """A static config without some input scales, with a per-tensor-sized k_scale where attn_head needs 2 values."""
    path = tiny_real_layout(tmp_path, "fp8-static-attn-head", drop=("model.layers.1.self_attn.o_proj.input_scale",))
    tensors = {"model.layers.0.self_attn.k_proj.weight": torch.zeros(32, 64).to(torch.float8_e4m3fn),
               "model.layers.1.self_attn.o_proj.weight": torch.zeros(64, 64).to(torch.float8_e4m3fn)}
    from safetensors.torch import load_file

    state = dict(load_file(str(path / "model.safetensors")), **tensors)
    state["model.layers.1.self_attn.v_scale"] = torch.full((1,), 0.5)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        inspect_checkpoint(path)
    message = str(info.value)
    assert "KV-cache scale model.layers.1.self_attn.v_scale has shape (1,)" in message, message
    assert "static activations, but 1 FP8 weights have no input_scale (e.g. model.layers.1.self_attn.o_proj" \
        in message, message
    assert "config.json" in message and "(2 problem(s))" in message, message


def test_check_reports_static_inputs_per_head_and_dtype(tmp_path):
    report = check(tiny_real_layout(tmp_path, "fp8-static-attn-head"))
    assert report.exit_code == 0, report.problems
    assert report.config["activations"] == "static" and report.config["kv_cache_scales"] == "attn_head"
    assert report.config["dtype"] == "float32"
    rows = [row for row in report.scales if row.kind == "k"]
    assert rows and all(row.outcome == "loads (per head)" and row.values == [0.5, 0.5] for row in rows)
    assert report.linear["input_scales"] == 14 and "applied" in report.linear["static_inputs"]


def test_check_flags_input_scales_a_dynamic_config_has_no_parameter_for(tmp_path):
    path = tiny_real_layout(tmp_path, "fp8-static-tensor")
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["input_activations"].update(dynamic=True,
                                                                                          strategy="token")
    config["dtype"] = "bfloat16"
    (path / "config.json").write_text(json.dumps(config))
    report = check(path)
    assert report.exit_code == 1
    assert sum("static input_scale, but the config says dynamic" in p for p in report.problems) == 14
    assert any("not BF16 although config.json says dtype=bfloat16" in p for p in report.problems), report.problems


def test_a_modelopt_checkpoint_described_only_by_hf_quant_config(tmp_path):
    """No quantization_config in config.json, ModelOpt's hf_quant_config.json beside it: inspected and checked as
    ModelOpt (static W8A8), as vLLM's ModelOptFp8Config reads it."""
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    (tmp_path / HF_QUANT_CONFIG).write_text(json.dumps({
        "producer": {"name": "modelopt", "version": "0.19.0"},
        "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head"]}}))
    tensors = {"model.embed_tokens.weight": torch.zeros(256, 64)}
    for index in range(2):
        tensors[f"model.layers.{index}.self_attn.k_proj.k_scale"] = torch.tensor(0.5)
        tensors[f"model.layers.{index}.self_attn.v_proj.v_scale"] = torch.tensor(0.25)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    info = inspect_checkpoint(tmp_path)
    assert info.quant_method == "modelopt" and info.scheme is not None and info.scheme.source == HF_QUANT_CONFIG
    assert info.kv_scales == ((0.5, 0.25), (0.5, 0.25))
    report = check(tmp_path)
    assert report.exit_code == 0, report.problems
    assert report.quant_method == "modelopt" and report.config["activations"] == "static"
