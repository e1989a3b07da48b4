"""Nothing half-applied (issue 14, classes 4-9 and 12): validation before any write, transactional reload, abort/GC.

Every case snapshots the whole model (kernel tensors and KV host mirrors, through the reference
adapter's walk, as the suite does) and checks it bit-identical after the rejection. Failures are
injected at every step: the weights iterable raising (``RuntimeError`` and ``KeyboardInterrupt``)
before each position, a bad tensor in the last layer, a NaN ``k_scale`` in layer 0, partial layers,
and processing that raises after it already wrote (write-back, output scales) at every call.
"""

from __future__ import annotations

import gc
import math

import pytest
import torch

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.conformance.assertions import assert_same_state, assert_unchanged
from loadspec.reference import api
from loadspec.reference import kv_cache as kv_cache_module
from loadspec.reference.errors import (
    DtypeMismatchError,
    DuplicateSourceError,
    LinearScaleValueError,
    LoadspecError,
    NotLoadableError,
    PartialLayerError,
    ScaleValueError,
)
from loadspec.reference.layers.linear import LINEAR_SCALE_MAX
from loadspec.reference.reload import ReloadSession
from loadspec.reference.spec import DEFAULT_SPEC, LayerSpec
from loadspec.strategies.synthetic import synthetic_checkpoint

STATIC = DEFAULT_SPEC.with_(quant_method="modelopt")  # FP8 linears with static input_scale
MLA = DEFAULT_SPEC.with_(attention="mla")
TIED = DEFAULT_SPEC.with_(tie_embeddings=True, layers=tuple(
    LayerSpec(qkv_quant="fp8_per_channel", o_quant="fp8_per_tensor") for _ in range(2)))
SPECS = [pytest.param(DEFAULT_SPEC, id="mha"), pytest.param(MLA, id="mla"), pytest.param(TIED, id="tied")]


def loaded(spec=DEFAULT_SPEC, *, seed=0, **kw):
    model = api.build(spec)
    api.first_load(model, synthetic_checkpoint(spec, seed=seed, **kw).items())
    return model


def new_weights(spec=DEFAULT_SPEC, seed=7, **kw):
    return list(synthetic_checkpoint(spec, seed=seed, kv_scales={"k": 2.0, "v": 4.0}, **kw).items())


def no_meta(model) -> bool:
    return not any(t.is_meta for t in ReferenceAdapter().kernel_tensors(model).values())


def failing(weights, at, exc):
    """``weights``, raising ``exc`` instead of yielding item ``at`` (``at == len``: after the last one)."""
    for index, item in enumerate(weights):
        if index == at:
            raise exc
        yield item
    if at >= len(weights):
        raise exc


def replaced(weights, name, tensor):
    assert any(n == name for n, _ in weights), name
    return [(n, tensor if n == name else t) for n, t in weights]


# ------------------------------------------------------------------ mid-iterator failures, every position
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("exc", [RuntimeError("disk went away"), KeyboardInterrupt()], ids=["error", "interrupt"])
@pytest.mark.parametrize("mode", ["one-call", "one-call-streaming", "session", "session-buckets"])
def test_an_iterable_failing_at_any_position_changes_nothing(spec, exc, mode, model_state):
    model = loaded(spec)
    weights = new_weights(spec)
    before = model_state(model)
    for at in range(len(weights) + 1):
        with pytest.raises(type(exc)):
            if mode == "one-call":
                api.reload(model, failing(weights, at, exc))
            elif mode == "one-call-streaming":  # the one call is planned whole before any write, streaming or not
                api.reload(model, failing(weights, at, exc), transactional=False)
            else:
                with ReloadSession(model, transactional=True) as session:
                    if mode == "session":
                        session.load(failing(weights, at, exc))
                    else:  # buckets of 5: earlier buckets are staged, the failing one aborts the whole reload
                        chunks = [weights[i:i + 5] for i in range(0, len(weights), 5)]
                        for i, chunk in enumerate(chunks):
                            session.load(failing(chunk, at - 5 * i, exc) if 0 <= at - 5 * i <= len(chunk)
                                         else chunk)
                        if at == len(weights):
                            raise exc
        assert no_meta(model), f"meta tensors left after a failure at position {at}"
        assert_unchanged(f"model after the iterable failed at {at} ({mode})", before, model_state(model), "RELOAD-11")
    api.reload(model, weights)  # the model still reloads afterwards
    fresh = loaded(spec, seed=7, kv_scales={"k": 2.0, "v": 4.0})
    assert_same_state("reload after the failures vs a fresh load", api.export(model), api.export(fresh), "RELOAD-2")


# ------------------------------------------------------------------ bad tensors, found before any write
HOSTILE_SCALES = [math.nan, math.inf, -math.inf, 0.0, -0.5, -1.0, 1e38]


@pytest.mark.parametrize("value", HOSTILE_SCALES, ids=str)
@pytest.mark.parametrize("phase", ["first_load", "reload", "reload-streaming", "session"])
def test_nan_k_scale_in_layer_0_rejected_before_any_write(value, phase, model_state):
    name = "model.layers.0.self_attn.attn.k_scale"
    weights = replaced(new_weights(), name, torch.tensor(value))
    if value == 1e38:  # finite and positive: a legal KV-cache scale, so nothing to reject
        pytest.skip("1e38 is a legal KV-cache scale (only linear scales have an upper bound)")
    model = api.build(DEFAULT_SPEC) if phase == "first_load" else loaded()
    before = model_state(model)
    with pytest.raises(ScaleValueError, match=r"layers\.0\.self_attn\.attn\.k_scale") as info:
        if phase == "first_load":
            api.first_load(model, weights)
        elif phase == "reload":
            api.reload(model, weights)
        elif phase == "reload-streaming":
            api.reload(model, weights, transactional=False)
        else:
            with ReloadSession(model, transactional=True) as session:
                session.load(weights[:10])
                session.load(weights[10:])
    if value == -1.0:
        assert "sentinel" in str(info.value)
    assert no_meta(model)
    assert_unchanged(f"model after k_scale={value} ({phase})", before, model_state(model), "LOAD-13")


LAST = "model.layers.1.mlp.down_proj"


def bad_tensors():
    scale = f"{LAST}.weight_scale"
    weight = f"{LAST}.weight"
    base = dict(new_weights())
    shape_w, shape_s = base[weight].shape, base[scale].shape
    cases = {f"{scale}={v}": (scale, torch.full(shape_s, v), LinearScaleValueError) for v in HOSTILE_SCALES}
    cases[f"{scale} one NaN"] = (scale, base[scale].clone().index_fill_(0, torch.tensor([3]), math.nan),
                                 LinearScaleValueError)
    for dtype in (torch.float8_e5m2, torch.bfloat16, torch.float32, torch.int8, torch.bool):
        cases[f"{weight} {dtype}"] = (weight, torch.ones(shape_w, dtype=dtype), DtypeMismatchError)
    cases[f"{weight} complex"] = (weight, torch.ones(shape_w, dtype=torch.complex64), DtypeMismatchError)
    cases[f"{scale} int"] = (scale, torch.ones(shape_s, dtype=torch.int32), DtypeMismatchError)
    cases["norm int"] = ("model.layers.1.post_attention_layernorm.weight", torch.ones(16, dtype=torch.int64),
                         DtypeMismatchError)
    cases["k_scale int"] = ("model.layers.1.self_attn.attn.k_scale", torch.tensor(1, dtype=torch.int32),
                            DtypeMismatchError)
    cases["k_scale fp8"] = ("model.layers.1.self_attn.attn.k_scale", torch.tensor(1.0).to(torch.float8_e4m3fn),
                            DtypeMismatchError)
    return cases


BAD = bad_tensors()


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("phase", ["first_load", "reload", "session"])
def test_a_bad_tensor_in_the_last_layer_changes_nothing(case, phase, model_state):
    name, tensor, error = BAD[case]
    weights = replaced(new_weights(), name, tensor)
    model = api.build(DEFAULT_SPEC) if phase == "first_load" else loaded()
    before = model_state(model)
    with pytest.raises(error, match=name.replace(".", r"\.")):
        if phase == "first_load":
            api.first_load(model, weights)
        elif phase == "reload":
            api.reload(model, weights)
        else:
            with ReloadSession(model, transactional=True) as session:
                for i in range(0, len(weights), 4):
                    session.load(weights[i:i + 4])
    assert no_meta(model)
    assert_unchanged(f"model after {case} ({phase})", before, model_state(model), "LOAD-6")


def test_linear_scale_bound_is_where_the_dequantized_weight_overflows():
    assert LINEAR_SCALE_MAX * 448.0 <= torch.finfo(torch.float32).max
    assert not math.isfinite(float(torch.tensor(LINEAR_SCALE_MAX * 1.01 * 448.0, dtype=torch.float32)))


@pytest.mark.parametrize("phase", ["first_load", "reload"])
def test_static_input_scale_validated(phase, model_state):
    name = "model.layers.1.self_attn.v_proj.input_scale"
    weights = replaced(list(synthetic_checkpoint(STATIC, seed=7).items()), name, torch.tensor(math.nan))
    model = api.build(STATIC) if phase == "first_load" else loaded(STATIC)
    before = model_state(model)
    with pytest.raises(LinearScaleValueError, match="qkv_proj.input_scale shard 'v'"):
        (api.first_load if phase == "first_load" else api.reload)(model, weights)
    assert_unchanged("model after a NaN input_scale", before, model_state(model), "LOAD-12")


# ------------------------------------------------------------------ duplicate sources, output buffers
@pytest.mark.parametrize("phase", ["first_load", "reload"])
def test_engine_format_qkv_beside_q_k_v_rejected_naming_both(phase, model_state):
    weights = new_weights()
    qkv = torch.cat([dict(weights)[f"model.layers.0.self_attn.{p}_proj.weight"].float() for p in "qkv"]).to(
        torch.float8_e4m3fn)
    weights.append(("model.layers.0.self_attn.qkv_proj.weight", qkv))
    model = api.build(DEFAULT_SPEC) if phase == "first_load" else loaded()
    before = model_state(model)
    with pytest.raises(DuplicateSourceError) as info:
        (api.first_load if phase == "first_load" else api.reload)(model, weights)
    assert "self_attn.qkv_proj.weight" in str(info.value) and "self_attn.q_proj.weight" in str(info.value)
    assert_unchanged("model after two sources for qkv_proj.weight", before, model_state(model), "LOAD-14")


@pytest.mark.parametrize("phase", ["first_load", "reload"])
def test_tied_lm_head_beside_embedding_rejected_naming_both(phase, model_state):
    weights = new_weights(TIED)
    weights.append(("lm_head.weight", torch.ones(32, 16)))
    model = api.build(TIED) if phase == "first_load" else loaded(TIED)
    before = model_state(model)
    with pytest.raises(DuplicateSourceError) as info:
        (api.first_load if phase == "first_load" else api.reload)(model, weights)
    assert "lm_head.weight" in str(info.value) and "embed_tokens.weight" in str(info.value)
    assert_unchanged("model after two sources for the tied embedding", before, model_state(model), "LOAD-14")


@pytest.mark.parametrize("phase", ["first_load", "reload"])
@pytest.mark.parametrize("buffer", ["_k_scale", "_v_scale", "_q_scale", "_prob_scale"])
def test_output_buffers_are_not_loadable(phase, buffer, model_state):
    name = f"model.layers.0.self_attn.attn.{buffer}"
    weights = [*new_weights(), (name, torch.tensor(math.nan))]
    model = api.build(DEFAULT_SPEC) if phase == "first_load" else loaded()
    before = model_state(model)
    with pytest.raises(NotLoadableError, match=name.replace(".", r"\.")):
        (api.first_load if phase == "first_load" else api.reload)(model, weights)
    assert_unchanged(f"model after loading {buffer} by name", before, model_state(model), "LOAD-15")


def test_partial_layer_on_first_load_is_a_missing_weight(model_state):
    weights = [(n, t) for n, t in new_weights() if n != "model.layers.1.self_attn.v_proj.weight_scale"]
    model = api.build(DEFAULT_SPEC)
    before = model_state(model)
    with pytest.raises(LoadspecError, match=r"layers\.1\.self_attn\.qkv_proj\.weight_scale"):
        api.first_load(model, weights)
    assert_unchanged("model after a partial first load", before, model_state(model), "LOAD-7")


# ------------------------------------------------------------------ partial layers and processing failures
@pytest.mark.parametrize("spec", SPECS)
def test_transactional_partial_layer_writes_nothing(spec, model_state):
    model = loaded(spec)
    before = model_state(model)
    proj = "kv_b_proj" if spec.attention == "mla" else "v_proj"
    weights = [(n, t) for n, t in new_weights(spec) if not n.endswith(f"layers.1.self_attn.{proj}.weight_scale")]
    with pytest.raises(PartialLayerError, match="nothing was written"):
        api.reload(model, weights)
    assert no_meta(model)
    assert_unchanged("model after a partial transactional reload", before, model_state(model), "RELOAD-11")


def _raise_after(original, calls, fail_at):
    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)  # write first, then fail: the rollback must undo it
        calls.append(None)
        if len(calls) == fail_at:
            raise KeyboardInterrupt if fail_at % 2 else RuntimeError(f"injected at call {fail_at}")
        return result
    return wrapper


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("target", ["write_back", "write_outputs", "process_attention"])
def test_a_failure_after_writing_at_any_step_is_rolled_back(spec, target, monkeypatch, model_state):
    weights = new_weights(spec)
    for fail_at in range(1, 12):
        model = loaded(spec)
        before = model_state(model)
        calls: list[None] = []
        with monkeypatch.context() as patch:
            if target == "write_back":
                patch.setattr(ReloadSession, "_write_back", _raise_after(ReloadSession._write_back, calls, fail_at))
            elif target == "write_outputs":
                patch.setattr(kv_cache_module, "write_outputs",
                              _raise_after(kv_cache_module.write_outputs, calls, fail_at))
            else:
                patch.setattr(ReloadSession, "_finish_attention",
                              _raise_after(ReloadSession._finish_attention, calls, fail_at))
            try:
                api.reload(model, weights)
            except (RuntimeError, KeyboardInterrupt):
                pass
            else:
                assert len(calls) < fail_at, "the injected failure did not propagate"
                break  # fewer steps than fail_at: the reload completed
        assert no_meta(model)
        assert_unchanged(f"model after a failure at {target} call {fail_at}", before, model_state(model),
                         "RELOAD-11")


# ------------------------------------------------------------------ abort and garbage collection
@pytest.mark.parametrize("transactional", [False, True], ids=["streaming", "transactional"])
@pytest.mark.parametrize("ending", ["abort", "gc", "with-exception"])
def test_an_unfinished_session_restores_the_model(transactional, ending, model_state):
    model = loaded()
    before = model_state(model)
    # Only some tensors of every layer: in streaming mode no layer is complete, so none is written.
    some = [(n, t) for n, t in new_weights() if n.endswith("weight_scale")]
    if ending == "with-exception":
        with pytest.raises(RuntimeError), ReloadSession(model, transactional=transactional) as session:
            session.load(some)
            raise RuntimeError("caller gave up")
    else:
        session = ReloadSession(model, transactional=transactional)
        session.load(some)
        assert not no_meta(model), "a session in progress registers meta templates"
        if ending == "abort":
            session.abort()
        else:
            del session
            gc.collect()
    assert no_meta(model), f"meta tensors left registered after {ending}"
    assert_unchanged(f"model after {ending}", before, model_state(model), "RELOAD-12")
    api.reload(model, new_weights())  # and it reloads normally afterwards


def test_streaming_abort_keeps_processed_layers_and_leaves_no_meta(model_state):
    model = loaded()
    before = model_state(model)
    weights = new_weights()
    session = ReloadSession(model)
    session.load([(n, t) for n, t in weights if ".layers.0.mlp.down_proj." in n])  # one complete layer
    del session
    gc.collect()
    assert no_meta(model)
    after = model_state(model)
    changed = {k for k in before if not _same(before[k], after[k])}
    assert changed and all("layers.0.mlp.down_proj" in k for k in changed), changed


def _same(a, b) -> bool:
    try:
        assert_unchanged("x", {"x": a}, {"x": b}, "RELOAD-12")
    except AssertionError:
        return False
    return True


# ------------------------------------------------------------------ memory cost
@pytest.mark.parametrize("spec", SPECS)
def test_transactional_memory_cost_is_measured(spec):
    model = loaded(spec)
    model_bytes = sum(t.numel() * t.element_size() for t in ReferenceAdapter().kernel_tensors(model).values())
    weights = new_weights(spec)
    input_bytes = sum(t.numel() * t.element_size() for _, t in weights)
    session = ReloadSession(model, transactional=True)
    session.load(weights)
    session.finish()
    assert session.staged_bytes == input_bytes
    assert 0 < session.backup_bytes <= model_bytes
    streaming = ReloadSession(model)
    streaming.load(weights)
    streaming.finish()
    assert streaming.staged_bytes == streaming.backup_bytes == 0


def test_a_weight_given_in_two_buckets_of_a_transactional_session_is_rejected(model_state):
    model = loaded()
    before = model_state(model)
    weights = new_weights()
    name = "model.layers.0.self_attn.q_proj.weight"
    again = [(n, t) for n, t in weights if n == name]
    with pytest.raises(DuplicateSourceError, match="another load call"):
        with ReloadSession(model, transactional=True) as session:
            session.load(weights)
            session.load(again)
    assert no_meta(model)
    assert_unchanged("model after a weight given twice across buckets", before, model_state(model), "LOAD-14")


# ------------------------------------------------------------------ SIGINT at any write
BF16_LINEARS = DEFAULT_SPEC.with_(params_dtype="bfloat16", layers=(
    LayerSpec(), LayerSpec(qkv_quant="fp8_per_tensor")))  # layout-preserving linears beside processed ones


@pytest.fixture
def default_sigint():
    """SIGINT raises KeyboardInterrupt during the test, even where the runner ignores it (a background job)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("spec", [pytest.param(BF16_LINEARS, id="preserving+fp8"), *SPECS])
def test_sigint_at_any_write_commits_every_layer_or_none(spec, monkeypatch, model_state, default_sigint):
    """A real SIGINT before the deferred writes of the layout-preserving layers rolls back; one during them is
    held until they are all written: either way the model is the old state or the new one, never a mix."""
    import importlib
    import os
    import signal

    reload_module = importlib.import_module("loadspec.reference.reload")  # the package's ``reload`` is api.reload

    weights = new_weights(spec)
    reference = loaded(spec)
    api.reload(reference, weights)
    reloaded = api.export(reference)
    outcomes = set()
    for at in range(1, 200):
        model = loaded(spec)
        before = model_state(model)
        calls = []
        original = reload_module.write_owned

        def interrupting(*args, at=at, calls=calls, original=original):
            calls.append(None)
            if len(calls) == at:
                os.kill(os.getpid(), signal.SIGINT)
            return original(*args)

        with monkeypatch.context() as patch:
            patch.setattr(reload_module, "write_owned", interrupting)
            try:
                api.reload(model, weights)
            except KeyboardInterrupt:
                pass
            else:
                assert len(calls) < at, "the SIGINT did not propagate"
                break
        after = model_state(model)
        assert no_meta(model)
        try:
            assert_unchanged(f"model after SIGINT at write {at}", before, after, "RELOAD-11")
            outcomes.add("rolled back")
        except AssertionError:
            assert_same_state(f"model after SIGINT at write {at} (not rolled back: must be fully reloaded)",
                              api.export(model), reloaded, "RELOAD-11")
            outcomes.add("committed")
    assert "rolled back" in outcomes
    if spec is BF16_LINEARS:
        assert outcomes == {"rolled back", "committed"}, outcomes
