"""The E2E harness itself (no rule): checkpoint inspection, rejections before anything is built, the cache.

These check ``loadspec.conformance.e2e``, not an implementation, so they live outside the suite.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from loadspec.conformance import e2e
from loadspec.strategies.producers import PRODUCERS, quantization_config
from loadspec.strategies.synthetic import kv_scale_tensors

TINY = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 256,
        "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}


def tiny_checkpoint(path, scales: dict, *, qconfig=None, producer: str = "autofp8"):
    """A config plus a safetensors file holding only ``scales`` (and one weight): enough for inspection."""
    path.mkdir(parents=True, exist_ok=True)
    config = dict(TINY, quantization_config=quantization_config(producer) if qconfig is None else qconfig)
    if qconfig == {}:
        del config["quantization_config"]
    (path / "config.json").write_text(json.dumps(config))
    save_file({"model.norm.weight": torch.ones(64), **scales}, str(path / "model.safetensors"))
    return path


def producer_scales(producer: str, values=((0.5, 0.25), (0.125, 2.0))) -> dict:
    """Two layers' k/v scales (and q/prob 1.0) in ``producer``'s names, shapes and dtypes (a bf16 model)."""
    spec = e2e.forward.spec_from_hf_config(TINY, params_dtype="bfloat16", quant_method=PRODUCERS[producer].quant_method)
    out = {}
    for index, (k, v) in enumerate(values):
        out.update(kv_scale_tensors(spec, index, producer=producer, kv_scales={"k": k, "v": v, "q": 1.0, "prob": 1.0}))
    return out


class NothingAdapter:
    """An adapter whose every call fails: a run that touches it got past the checkpoint checks."""

    name, capabilities = "nothing", frozenset({"model"})

    def __getattr__(self, name):
        raise AssertionError(f"the run called adapter.{name} before rejecting the checkpoint")


@pytest.mark.parametrize("producer", e2e.PRODUCER_IDS)
def test_scenario_reads_every_producer_layout(tmp_path, producer):
    info = e2e.inspect_checkpoint(tiny_checkpoint(tmp_path, producer_scales(producer), producer=producer))
    expected = ((0.5, 0.5), (2.0, 2.0)) if PRODUCERS[producer].fused_kv else ((0.5, 0.25), (0.125, 2.0))
    assert info.kv_scales == expected
    assert info.quant_method == PRODUCERS[producer].quant_method
    assert e2e.spec_for(info).quant_method == info.quant_method


@pytest.mark.parametrize("case", ["float checkpoint", "fp8 config, no scales", "one layer without scales"])
def test_scenario_rejects_a_checkpoint_without_kv_scales(tmp_path, case):
    scales = {n: t for n, t in producer_scales("autofp8").items() if n.startswith("model.layers.0.")}
    path = {"float checkpoint": lambda: tiny_checkpoint(tmp_path, {}, qconfig={}),
            "fp8 config, no scales": lambda: tiny_checkpoint(tmp_path, {}),
            "one layer without scales": lambda: tiny_checkpoint(tmp_path, scales)}[case]()
    with pytest.raises(ValueError, match=r"no KV-cache scales .*model\.layers\.(0|1)\.self_attn\..*use 1\.0") as info:
        e2e.run_reload(NothingAdapter(), path)
    if case == "one layer without scales":
        assert "1 of 2 layers (e.g. model.layers.1.self_attn.*" in str(info.value)


def test_scenario_rejects_a_non_scalar_kv_scale(tmp_path):
    scales = producer_scales("compressed-tensors")
    scales["model.layers.1.self_attn.v_scale"] = torch.ones(3)
    path = tiny_checkpoint(tmp_path, scales, producer="compressed-tensors")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.v_scale has shape \(3,\).*one element"):
        e2e.run_reload(NothingAdapter(), path)


@pytest.mark.parametrize("qconfig, scheme", [
    ({"quant_method": "gptq", "bits": 4}, "'gptq'"),
    ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, "NVFP4"),
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "block-wise"),
    (dict(quantization_config("compressed-tensors"), kv_cache_scheme={"num_bits": 8, "type": "float",
                                                                      "strategy": "head"}), "strategy='head'"),
], ids=["gptq", "nvfp4", "fp8-block", "unknown-kv-strategy"])
def test_scenario_rejects_an_unsupported_scheme(tmp_path, qconfig, scheme):
    path = tiny_checkpoint(tmp_path, producer_scales("autofp8"), qconfig=qconfig)
    with pytest.raises(ValueError, match=f"unsupported quantization_config scheme: .*{scheme}"):
        e2e.run_reload(NothingAdapter(), path)


def test_scenario_rejects_per_tensor_scales_under_an_attn_head_config(tmp_path):
    """kv_cache_scheme.strategy attn_head wants one k/v scale per KV head: a one-element scale is listed, never
    broadcast [HEADS-1]; every layer's problem in one message."""
    qconfig = dict(quantization_config("compressed-tensors"),
                   kv_cache_scheme={"num_bits": 8, "type": "float", "strategy": "attn_head", "dynamic": False})
    path = tiny_checkpoint(tmp_path, producer_scales("compressed-tensors"), qconfig=qconfig,
                           producer="compressed-tensors")
    with pytest.raises(ValueError, match=r"problem\(s\)\).*4 KV-cache scales have the wrong size \(e\.g\. "
                                         r"model\.layers\.0\.self_attn\.k_scale has shape \(1,\).*should have 2 "
                                         r"elements \(one per KV head"):
        e2e.run_reload(NothingAdapter(), path)


def test_scenario_rejects_static_activation_scales(tmp_path):
    scales = dict(producer_scales("autofp8"), **{"model.layers.0.self_attn.q_proj.input_scale": torch.tensor(1.0)})
    path = tiny_checkpoint(tmp_path, scales)
    with pytest.raises(ValueError, match=r"static activation scales .*q_proj\.input_scale"):
        e2e.run_reload(NothingAdapter(), path)


def test_quantized_checkpoints_are_cached(smollm):
    producer, strategy = e2e.BROKEN_CASE
    first = e2e.quantized_checkpoint(producer, weight_strategy=strategy)
    written = (first / "model.safetensors").stat().st_mtime_ns
    again = e2e.quantized_checkpoint(producer, weight_strategy=strategy)
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == written
    assert first.parent == e2e.cache_dir()
    marker = json.loads((first / e2e.quantized_cache.MARKER).read_text())
    assert marker["producer_id"] == producer and marker["source"]["gguf_sha256"]


def test_every_scale_is_compared_with_the_file_after_the_producers_transform(tmp_path):
    """Fused per-tensor shards: the max weight and input scale; per-head k/v one value per head; a loader that
    silently exported 1.0 (or dropped a scale) is caught even where the perplexity would stay low [E2E-1]."""
    qconfig = dict(quantization_config("compressed-tensors", activation_scheme="static"),
                   kv_cache_scheme={"num_bits": 8, "type": "float", "strategy": "attn_head", "dynamic": False,
                                    "symmetric": True})
    scales = {}
    for index in range(2):
        prefix = f"model.layers.{index}."
        scales[prefix + "self_attn.k_scale"] = torch.tensor([0.5, 0.25]).reshape(2, 1, 1)
        scales[prefix + "self_attn.v_scale"] = torch.tensor([0.125, 2.0]).reshape(2, 1, 1)
        for n, proj in enumerate(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")):
            scales[f"{prefix}{proj}.weight_scale"] = torch.tensor([0.01 * (n + 1)])
            scales[f"{prefix}{proj}.input_scale"] = torch.tensor([0.1 * (n + 1)])
    path = tiny_checkpoint(tmp_path, scales, qconfig=qconfig)
    spec = e2e.forward.spec_from_hf_config(TINY, linear_quant="fp8_per_tensor", quant_method="compressed-tensors")
    kv = tuple(((0.5, 0.25), (0.125, 2.0)) for _ in range(2))
    expected = e2e.expected_scales(path, spec, kv)
    qkv = "model.layers.1.self_attn.qkv_proj"
    assert float(expected[f"{qkv}.weight_scale"]) == pytest.approx(0.03)  # max of q, k, v
    assert float(expected["model.layers.1.mlp.gate_up_proj.weight_scale"]) == pytest.approx(0.06)
    assert expected["model.layers.0.self_attn.attn.v_scale"].tolist() == [0.125, 2.0]
    if e2e.scales.spec_static_inputs(spec.with_(activation_scheme="static")):
        static = e2e.expected_scales(path, spec.with_(activation_scheme="static"), kv)
        assert float(static[f"{qkv}.input_scale"]) == pytest.approx(0.3)
    state = {name: value.clone() for name, value in expected.items()}
    assert e2e.scale_mismatches(state, expected) == []
    state["model.layers.0.self_attn.attn.k_scale"] = torch.ones(2)  # the silent 1.0
    del state[f"{qkv}.weight_scale"]
    assert e2e.scale_mismatches(state, expected) == [
        ("model.layers.0.self_attn.attn.k_scale", "[1, 1]", "[0.5, 0.25]"), (f"{qkv}.weight_scale", "absent", "0.03")]


def test_q_scales_are_read_checked_and_compared_with_the_file(tmp_path):
    """A per-tensor checkpoint's q scales (ModelOpt FP8 attention's ``q_proj.q_scale``) are read per layer, a bad
    one is listed with the other problems, and a loader that exports another q (vLLM's default: q = k) is caught
    [E2E-1, E2E-4]."""
    scales = {**producer_scales("modelopt"), "model.layers.0.self_attn.q_proj.q_scale": torch.tensor([0.75])}
    info = e2e.inspect_checkpoint(tiny_checkpoint(tmp_path / "ok", scales, producer="modelopt-fp8-attention"))
    assert info.q_scales == (0.75, None)
    assert "model.layers.0.self_attn.q_proj.q_scale" in info.scale_names
    spec = e2e.forward.spec_from_hf_config(TINY, linear_quant="fp8_per_tensor", quant_method="modelopt")
    expected = e2e.expected_scales(info.path, spec, info.kv_scales, info.q_scales)
    assert expected["model.layers.0.self_attn.attn.q_scale"].tolist() == 0.75
    assert "model.layers.1.self_attn.attn.q_scale" not in expected
    state = dict(expected, **{"model.layers.0.self_attn.attn.q_scale": torch.tensor(0.5)})  # q = k
    assert e2e.scale_mismatches(state, expected) == [("model.layers.0.self_attn.attn.q_scale", "0.5", "0.75")]
    bad = dict(scales, **{"model.layers.1.self_attn.q_proj.q_scale": torch.tensor([float("nan")])})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.q_proj\.q_scale=nan, but should be finite"):
        e2e.inspect_checkpoint(tiny_checkpoint(tmp_path / "bad", bad, producer="modelopt-fp8-attention"))
