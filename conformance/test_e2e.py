"""E2E: SmolLM2-135M built with dummy weights, reloaded from FP8-KV checkpoints of every producer, scored.

The scenario lives in ``loadspec.conformance.e2e``. The quantized checkpoints are cached in
the loadspec user cache, so only a machine's first run quantizes. One run per (producer,
strategy, device) serves both E2E-1 and E2E-2 (results are kept, kernel states are not).
A user checkpoint (``$LOADSPEC_CHECKPOINT``: a local directory or a Hub id) runs E2E-1 and
E2E-2 on that checkpoint too. Select these tests with ``-m e2e`` (or ``--rule E2E``), deselect
with ``-m "not e2e"``.

The tests cite E2E rules only: citing a layout's NAMES rule too would blame that rule for any
end-to-end failure (a mutant that divides KV scales would fail NAMES-2 through the
compressed-tensors-legacy case).
"""

from __future__ import annotations

import json

import pytest
import torch

from loadspec.conformance import e2e
from loadspec.conformance.assertions import fail, skip_unless
from loadspec.conformance.rules import RULES_BY_ID, SHOULD
from loadspec.reference.producers import PRODUCERS, quantization_config

pytestmark = [pytest.mark.requires("model"), pytest.mark.e2e]


def cases(must_rule: str) -> list:
    """Every (producer, strategy) case, citing ``must_rule``, or E2E-4 where its names rule is a SHOULD."""
    return [pytest.param(producer, strategy, id=f"{producer}-{strategy}", marks=[
        pytest.mark.requires("tied_embeddings", f"fp8_per_{strategy}"),
        pytest.mark.rule("E2E-4" if RULES_BY_ID[PRODUCERS[producer].rule].level == SHOULD else must_rule)])
        for producer, strategy in e2e.CASES]


# ------------------------------------------------------------------ fixtures and shared runs
@pytest.fixture(scope="session")
def smollm():
    """The converted float SmolLM2 checkpoint (skips when the embedded model is unavailable)."""
    pytest.importorskip("gguf", reason="the gguf package (extra 'e2e') is not installed")
    pytest.importorskip("transformers", reason="transformers (extra 'e2e') is not installed")
    try:
        return e2e.smollm_checkpoint()
    except FileNotFoundError as exc:
        pytest.skip(f"embedded model unavailable: {exc}")


@pytest.fixture(scope="session")
def user_checkpoint(request):
    """``--checkpoint`` (else ``$LOADSPEC_CHECKPOINT``) resolved to a directory; skips when neither is given."""
    pytest.importorskip("transformers", reason="transformers (extra 'e2e') is not installed")
    value = request.config.getoption("--checkpoint")
    path = e2e.resolve_checkpoint(value) if value else e2e.checkpoint_from_env()
    if path is None:
        pytest.skip(f"no user checkpoint: pass --checkpoint <directory or org/name> (or set {e2e.CHECKPOINT_ENV})")
    return path


_RUNS: dict[tuple, object] = {}


def _shared(key: tuple, run):
    """``run()`` once per key for the whole session: its result, or the same exception again."""
    if key not in _RUNS:
        try:
            _RUNS[key] = run()
        except Exception as exc:  # noqa: BLE001 - re-raised by every test that shares the run
            _RUNS[key] = exc
    result = _RUNS[key]
    if isinstance(result, Exception):
        raise result
    return result


def smollm_run(impl, producer: str, strategy: str, device: str, *, multiplier: float = 1.0,
               fresh: bool = True) -> e2e.E2EResult:
    return _shared((id(impl), producer, strategy, multiplier, device, fresh), lambda: e2e.run_producer(
        impl, producer, device=device, weight_strategy=strategy, scale_multiplier=multiplier, fresh=fresh))


def user_run(impl, path, device: str) -> e2e.E2EResult:
    info = e2e.inspect_checkpoint(path)
    spec = e2e.spec_for(info)
    skip_unless(impl, *e2e.required_capabilities(spec, device))
    return _shared((id(impl), str(path), device), lambda: e2e.run_reload(impl, path, device=device, spec=spec,
                                                                         info=info))


# ------------------------------------------------------------------ checks
def _what(result: e2e.E2EResult) -> str:
    what = f"perplexity after dummy load + reload of the {result.label()} checkpoint ({result.device})"
    mismatches = result.kv_scale_mismatches()
    if mismatches:
        name, got, expected = mismatches[0]
        what += f" [{len(mismatches)} exported k/v scales are not the checkpoint's, e.g. {name} x{got / expected:g}]"
    return what


def check_low_perplexity(result: e2e.E2EResult) -> None:
    __tracebackhide__ = True
    if not result.perplexity < e2e.MAX_PERPLEXITY:
        fail(_what(result), round(result.perplexity, 4), f"< {e2e.MAX_PERPLEXITY}", "E2E-1")


def check_same_as_fresh(result: e2e.E2EResult) -> None:
    __tracebackhide__ = True
    if result.differences:
        name, how = next(iter(result.differences.items()))
        fail(f"{name} after dummy load + reload of the {result.label()} checkpoint "
             f"({len(result.differences)} kernel tensors differ from a fresh load)", how,
             "bit-identical to a fresh load", "E2E-2")
    if result.perplexity != result.fresh_perplexity:
        fail(f"perplexity after dummy load + reload of the {result.label()} checkpoint", result.perplexity,
             result.fresh_perplexity, "E2E-2")


# ------------------------------------------------------------------ SmolLM2, every producer layout
@pytest.mark.parametrize("producer, strategy", cases("E2E-1"))
def test_reloaded_model_scores_low_perplexity(impl, smollm, producer, strategy, device):
    check_low_perplexity(smollm_run(impl, producer, strategy, device))


@pytest.mark.parametrize("producer, strategy", cases("E2E-2"))
def test_reload_equals_a_fresh_load(impl, smollm, producer, strategy, device):
    check_same_as_fresh(smollm_run(impl, producer, strategy, device))


@pytest.mark.rule("E2E-3")
@pytest.mark.requires("tied_embeddings", "fp8_per_tensor")
def test_kv_scales_divided_by_16_blow_up(impl, smollm, device):
    producer, strategy = e2e.BROKEN_CASE
    result = smollm_run(impl, producer, strategy, device, multiplier=e2e.BROKEN_SCALE_MULTIPLIER, fresh=False)
    mismatches = result.kv_scale_mismatches()
    if mismatches:
        name, got, expected = mismatches[0]
        fail(f"{name} after dummy load + reload of the {result.label()} checkpoint ({len(mismatches)} of "
             f"{2 * len(result.kv_scales)} k/v scales differ from the checkpoint's)", got, expected, "E2E-3")
    if not result.perplexity > e2e.BLOWUP_PERPLEXITY:
        fail(_what(result), round(result.perplexity, 4), f"> {e2e.BLOWUP_PERPLEXITY}", "E2E-3")


# ------------------------------------------------------------------ a user checkpoint
@pytest.mark.rule("E2E-1")
def test_user_checkpoint_scores_low_perplexity(impl, user_checkpoint, device):
    check_low_perplexity(user_run(impl, user_checkpoint, device))


@pytest.mark.rule("E2E-2")
def test_user_checkpoint_reload_equals_a_fresh_load(impl, user_checkpoint, device):
    check_same_as_fresh(user_run(impl, user_checkpoint, device))


# ------------------------------------------------------------------ the scenario itself (no rule: harness checks)
TINY = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 256,
        "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}


def tiny_checkpoint(path, scales: dict, *, qconfig=None, producer: str = "autofp8"):
    """A config plus a safetensors file holding only ``scales`` (and one weight): enough for inspection."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    config = dict(TINY, quantization_config=quantization_config(producer) if qconfig is None else qconfig)
    if qconfig == {}:
        del config["quantization_config"]
    (path / "config.json").write_text(json.dumps(config))
    save_file({"model.norm.weight": torch.ones(64), **scales}, str(path / "model.safetensors"))
    return path


def producer_scales(producer: str, values=((0.5, 0.25), (0.125, 2.0))) -> dict:
    from loadspec.reference.fp8_quantizer import kv_scale_tensors

    return kv_scale_tensors(producer, list(values), model_dtype=torch.bfloat16)


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
                                                                      "strategy": "attn_head"}), "attn_head"),
], ids=["gptq", "nvfp4", "fp8-block", "per-head-kv"])
def test_scenario_rejects_an_unsupported_scheme(tmp_path, qconfig, scheme):
    path = tiny_checkpoint(tmp_path, producer_scales("autofp8"), qconfig=qconfig)
    with pytest.raises(ValueError, match=f"unsupported quantization_config scheme: .*{scheme}"):
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
    marker = json.loads((first / e2e.MARKER).read_text())
    assert marker["producer_id"] == producer and marker["source"]["gguf_sha256"]
