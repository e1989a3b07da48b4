"""RELOAD: the layerwise reload lifecycle, on models drawn by ``layer_graphs()``."""

from __future__ import annotations

import gc
import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from loadspec.conformance.assertions import (
    assert_equal,
    assert_raises_value_error,
    assert_same_state,
    assert_unchanged,
    fail,
    snapshot,
)
from loadspec.conformance.drivers import (
    built,
    close_quietly,
    draw_case,
    graphs_for,
    heavy,
    layouts_for,
    live_pointers,
    real_model_options,
    run_device,
)
from loadspec.conformance.oracle import Twin, assert_mirrors_match_scales
from loadspec.conformance.reproducers import Case, record_case

pytestmark = pytest.mark.requires("model")


def model_state(impl, model) -> dict:
    return snapshot(impl.kernel_tensors(model), impl.host_mirrors(model))


@pytest.mark.rule("RELOAD-1")
@heavy()
@given(data=st.data())
def test_reload_keeps_every_kernel_tensor(impl, request, data, device):
    spec, layouts = draw_case(impl, request, data, "base", "reload")
    model = built(impl, spec, layouts["base"].tensors(), device=device)
    before = live_pointers(impl, model)
    impl.reload(model, layouts["reload"].tensors())
    assert_equal("kernel tensors' data_ptr after reload", live_pointers(impl, model), before, "RELOAD-1")


@pytest.mark.rule("RELOAD-2")
@heavy()
@given(data=st.data())
def test_reload_equals_a_fresh_load(impl, request, data, device):
    spec, layouts = draw_case(impl, request, data, "base", "reload")
    model = built(impl, spec, layouts["base"].tensors(), device=device)
    impl.reload(model, layouts["reload"].tensors())
    fresh = built(impl, spec, layouts["reload"].tensors(), device=device)
    assert_same_state("reloaded kernel state vs fresh load", impl.export_kernel_state(model),
                      impl.export_kernel_state(fresh), "RELOAD-2")


@pytest.mark.rule("RELOAD-3", "RELOAD-4")
@heavy()
@given(data=st.data())
def test_scale_only_reload_takes_fresh_defaults(impl, ref, request, data):
    spec, layouts = draw_case(impl, request, data, "base", quant_methods=("fp8", "compressed-tensors"),
                              allow_unquantized=False, kv_cache_dtypes=("fp8", "fp8_e4m3"), min_layers=2)
    k = data.draw(st.sampled_from([0.125, 2.0, 3.5]), label="new k_scale")
    delivery = [(f"{spec.layer_prefix(0)}{spec.container}.k_scale", torch.tensor(k))]
    results = []
    for adapter in (impl, ref):
        model = built(adapter, spec, layouts["base"].tensors())
        adapter.reload(model, delivery)
        results.append(adapter.export_kernel_state(model))
    got, expected = results
    for index in range(len(spec.layers)):
        rule = "RELOAD-3" if index == 0 else "RELOAD-4"
        for kind in ("q", "k", "v", "prob"):
            name = f"{spec.attention_prefix(index)}{kind}_scale"
            assert_equal(f"{name} after reloading only layer 0's k_scale={k}", float(got[name]),
                         float(expected[name]), rule)


@pytest.mark.rule("RELOAD-4", "RELOAD-5")
@heavy()
@given(data=st.data())
def test_layers_receiving_nothing_keep_everything(impl, request, data):
    spec, layouts = draw_case(impl, request, data, "base", "reload", min_layers=2)
    model = built(impl, spec, layouts["base"].tensors())
    kept = data.draw(st.integers(0, len(spec.layers) - 1), label="layer left out of the reload")
    prefix = spec.layer_prefix(kept)
    before = model_state(impl, model)
    impl.reload(model, [(n, t) for n, t in layouts["reload"].tensors() if not n.startswith(prefix)])
    after = model_state(impl, model)
    attention = f"{prefix}{spec.container}.attn."
    untouched = {n: v for n, v in before.items() if n.removeprefix("mirror:").startswith(prefix)}
    for rule, part in (("RELOAD-4", "attention layer"), ("RELOAD-5", "non-attention layers")):
        mine = {n: v for n, v in untouched.items()
                if n.removeprefix("mirror:").startswith(attention) == (rule == "RELOAD-4")}
        assert_unchanged(f"layer {kept}'s {part} (not in the reload)", mine, {n: after[n] for n in mine}, rule)


@pytest.mark.rule("RELOAD-6")
@heavy()
@given(data=st.data())
def test_partial_layer_rejected_and_kept(impl, request, data):
    fp8 = tuple(q for q in ("fp8_per_tensor", "fp8_per_channel") if q in impl.capabilities)
    if not fp8:
        pytest.skip("needs capability fp8_per_tensor or fp8_per_channel (a layer whose processing transforms it)")
    spec, layouts = draw_case(impl, request, data, "base", "reload", linear_quants=fp8, quant_methods=("fp8",),
                              allow_unquantized=False)
    model = built(impl, spec, layouts["base"].tensors())
    index = data.draw(st.integers(0, len(spec.layers) - 1), label="layer")
    proj = "v_proj" if spec.attention == "mha" else "kv_b_proj"
    dropped = f"{spec.layer_prefix(index)}{spec.container}.{proj}.weight_scale"
    layer = f"{spec.layer_prefix(index)}{spec.container}.{'qkv_proj' if proj == 'v_proj' else proj}"
    before = model_state(impl, model)
    assert_raises_value_error(f"reload without {dropped}", lambda: impl.reload(
        model, [(n, t) for n, t in layouts["reload"].tensors() if n != dropped]), "RELOAD-6",
        mentions=[f"{layer}.weight_scale"])
    after = model_state(impl, model)
    kept = {n: v for n, v in before.items() if n.startswith(layer + ".")}
    assert_unchanged(f"partial layer {layer}", kept, {n: after[n] for n in kept}, "RELOAD-6")


@pytest.mark.rule("RELOAD-7")
@heavy()
@given(data=st.data())
def test_reloading_twice_is_bit_identical(impl, request, data):
    spec, layouts = draw_case(impl, request, data, "base", "reload")
    model = built(impl, spec, layouts["base"].tensors())
    impl.reload(model, layouts["reload"].tensors())
    once = impl.export_kernel_state(model)
    impl.reload(model, layouts["reload"].tensors())
    assert_same_state("kernel state after the second reload", impl.export_kernel_state(model), once, "RELOAD-7")


@pytest.mark.rule("RELOAD-8")
@pytest.mark.requires("tied_embeddings")
@heavy()
@given(data=st.data())
def test_tied_weights_stay_tied(impl, request, data):
    spec, layouts = draw_case(impl, request, data, "base", "reload", allow_tied=True)
    if not spec.tie_embeddings:
        spec = spec.with_(tie_embeddings=True)
        layouts = {role: replace(layout, spec=spec) for role, layout in layouts.items()}
        record_case(request, Case(request.node.nodeid, layouts=layouts))
    model = built(impl, spec, layouts["base"].tensors())
    impl.reload(model, layouts["reload"].tensors())
    tensors = impl.kernel_tensors(model)
    embed, head = tensors[f"{spec.prefix}embed_tokens.weight"], tensors[spec.lm_head_name]
    assert_equal("lm_head.weight shares embed_tokens.weight's storage", head.data_ptr(), embed.data_ptr(), "RELOAD-8")
    expected = dict(layouts["reload"].tensors())[f"{spec.prefix}embed_tokens.weight"]
    exported = impl.export_kernel_state(model)[spec.lm_head_name]  # canonical: no vocabulary padding
    assert_same_state("lm_head.weight after the reload", {"lm_head.weight": exported},
                      {"lm_head.weight": expected.to(exported.dtype)}, "RELOAD-8")


@pytest.mark.rule("RELOAD-9")
@pytest.mark.requires("reload_sessions", "processing_order")
@heavy()
@given(data=st.data())
def test_delivery_after_processing_rejected(impl, request, data):
    spec, layouts = draw_case(impl, request, data, "base", "reload")
    model = built(impl, spec, layouts["base"].tensors())
    weights = layouts["reload"].tensors()
    session = impl.open_reload(model)
    session.load(weights)
    again = next((n, t) for n, t in weights if ".mlp.down_proj.weight" in n)
    try:
        assert_raises_value_error(f"delivering {again[0]} after its layer was processed",
                                  lambda: session.load([again]), "RELOAD-9", mentions=[again[0]])
    finally:
        close_quietly(session)


@pytest.mark.rule("RELOAD-10")
@heavy()
@given(data=st.data())
def test_order_and_grouping_do_not_matter(impl, request, data):
    spec, layouts = draw_case(impl, request, data, "base", "reload")
    weights = layouts["reload"].tensors()
    shuffled = data.draw(st.permutations(weights), label="delivery order")
    model = built(impl, spec, layouts["base"].tensors())
    if "reload_sessions" in impl.capabilities:
        cuts = sorted(data.draw(st.lists(st.integers(0, len(weights)), max_size=5), label="bucket boundaries"))
        session = impl.open_reload(model)
        for start, stop in zip([0, *cuts], [*cuts, len(weights)], strict=True):
            session.load(shuffled[start:stop])
        session.finish()
    else:
        impl.reload(model, shuffled)
    fresh = built(impl, spec, weights)
    assert_same_state("kernel state after a shuffled, bucketed reload", impl.export_kernel_state(model),
                      impl.export_kernel_state(fresh), "RELOAD-10")


def _fp8_case(impl, request, data, *roles):
    fp8 = tuple(q for q in ("fp8_per_tensor", "fp8_per_channel") if q in impl.capabilities)
    if not fp8:
        pytest.skip("needs capability fp8_per_tensor or fp8_per_channel (a layer whose processing transforms it)")
    return draw_case(impl, request, data, *roles, linear_quants=fp8, quant_methods=("fp8",),
                     allow_unquantized=False)


class InjectedFailure(RuntimeError):
    """Raised by a weights iterable the test breaks on purpose."""


def _breaking(weights, at):
    yield from weights[:at]
    raise InjectedFailure(f"the weights iterable failed before item {at} of {len(weights)}")


@pytest.mark.rule("RELOAD-11")
@heavy()
@given(data=st.data())
def test_rejected_or_interrupted_reload_changes_nothing(impl, request, data):
    spec, layouts = _fp8_case(impl, request, data, "base", "reload")
    weights = layouts["reload"].tensors()
    last = spec.layer_prefix(len(spec.layers) - 1)
    scales = [n for n, _ in weights if n.startswith(last) and n.endswith("weight_scale")]
    at = data.draw(st.integers(1, len(weights)), label="position the iterable fails at")
    cases = {  # every example checks all three: one of them is always a failure found late
        "a partial last layer": ([(n, t) for n, t in weights if n != scales[-1]], ValueError),
        "a NaN weight_scale in the last layer": (
            [(n, torch.full_like(t, math.nan) if n == scales[-1] else t) for n, t in weights], ValueError),
        f"an iterable raising before item {at}": (_breaking(weights, at), InjectedFailure),
    } if scales else {f"an iterable raising before item {at}": (_breaking(weights, at), InjectedFailure)}
    model = built(impl, spec, layouts["base"].tensors())
    for what, (delivery, expected) in cases.items():
        before = model_state(impl, model)
        try:
            impl.reload(model, delivery)
        except expected:
            pass
        except Exception as exc:  # noqa: BLE001
            fail(f"reload with {what}", f"{type(exc).__name__}: {exc}", expected.__name__, "RELOAD-11")
        else:
            fail(f"reload with {what}", "accepted", f"{expected.__name__}", "RELOAD-11")
        meta = [n for n, t in impl.kernel_tensors(model).items() if t.is_meta]
        if meta:
            fail(f"kernel tensors after a reload with {what}", f"meta (no data): {meta[:5]}", "real tensors",
                 "RELOAD-11")
        assert_unchanged(f"model after a reload with {what}", before, model_state(impl, model), "RELOAD-11")


@pytest.mark.rule("RELOAD-12")
@pytest.mark.requires("reload_sessions")
@heavy()
@given(data=st.data())
def test_abandoned_session_leaves_no_meta_tensors(impl, request, data):
    spec, layouts = _fp8_case(impl, request, data, "base", "reload")
    model = built(impl, spec, layouts["base"].tensors())
    before = model_state(impl, model)
    # weight_scale tensors only: no FP8 layer is complete, so none may be written
    bucket = [(n, t) for n, t in layouts["reload"].tensors() if n.endswith("weight_scale")]
    session = impl.open_reload(model)
    session.load(bucket)
    del session  # the caller gives up without finish (an exception, a crashed trainer)
    gc.collect()
    meta = [n for n, t in impl.kernel_tensors(model).items() if t.is_meta]
    if meta:
        fail("kernel tensors after abandoning a reload session", f"meta (no data): {meta[:5]}", "real tensors",
             "RELOAD-12")
    assert_unchanged("model after abandoning a reload session", before, model_state(impl, model), "RELOAD-12")


# ------------------------------------------------------- the oracle: whole kernel states (issue 15)
RELOAD_PATHS = ("one call", "a session in buckets", "a dummy load, then one call")


def _buckets(data, weights):
    shuffled = data.draw(st.permutations(weights), label="delivery order")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(weights)), max_size=4), label="bucket boundaries"))
    return [list(shuffled[start:stop]) for start, stop in zip([0, *cuts], [*cuts, len(weights)], strict=True)]


def _twin_reloaded(impl, ref, request, data, **graph_options):
    """A twin first-loaded (or dummy-loaded) and reloaded along a drawn path; returns it with the path."""
    spec, layouts = draw_case(impl, request, data, "base", "reload", **real_model_options(impl), **graph_options)
    path = data.draw(st.sampled_from(RELOAD_PATHS), label="reload path")
    twin = Twin(impl, ref, spec, device=run_device())
    if path.startswith("a dummy load"):
        twin.dummy_load()
    else:
        twin.first_load(layouts["base"].tensors)
    if path == "a session in buckets":
        twin.session(_buckets(data, layouts["reload"].tensors()))
    else:
        twin.reload(layouts["reload"].tensors)
    return twin, path


@pytest.mark.rule("RELOAD-13")
@heavy()
@given(data=st.data())
def test_reload_gives_the_reference_kernel_state(impl, ref, request, data):
    """After a reload by any path the exported kernel state equals the reference's after the same steps [RELOAD-13]."""
    twin, path = _twin_reloaded(impl, ref, request, data)
    twin.check(f"kernel state after a reload ({path})", "RELOAD-13", request=request)


@pytest.mark.rule("RELOAD-14")
@pytest.mark.requires("host_mirrors")
@heavy()
@given(data=st.data())
def test_host_mirrors_equal_device_scales_after_every_reload(impl, ref, request, data):
    """After a full reload by any path, then a reload of one layer's k_scale alone, and then a reload delivering
    no scale, every q/k/v host mirror equals its device scale [RELOAD-14]."""
    twin, path = _twin_reloaded(impl, ref, request, data, kv_cache_dtypes=("fp8", "fp8_e4m3"), allow_unquantized=False)
    twin.check_mirrors(f"after a reload ({path})", "RELOAD-14", request=request)
    spec = twin.spec
    index = data.draw(st.integers(0, len(spec.layers) - 1), label="layer reloaded alone")
    if spec.quant_method is not None:  # the model has KV-cache scale parameters
        k = data.draw(st.sampled_from([0.125, 2.0, 3.5]), label="new k_scale")
        impl.reload(twin.model, [(f"{spec.layer_prefix(index)}{spec.container}.k_scale", torch.tensor(k))])
        assert_mirrors_match_scales(f"after reloading layer {index}'s k_scale={k} alone", impl, twin.model, spec,
                                    "RELOAD-14", request=request)
    norm = f"{spec.layer_prefix(index)}input_layernorm.weight"
    weights = dict(impl.export_kernel_state(twin.model))
    if norm in weights:
        impl.reload(twin.model, [(norm, weights[norm])])
        assert_mirrors_match_scales(f"after reloading {norm} alone", impl, twin.model, spec, "RELOAD-14",
                                    request=request)


# ------------------------------------------------------- attention layers with more than scales (issue 15 item 2)
SINK_DELIVERIES = ("everything", "everything but the sinks", "the sinks only", "no attention tensor")


@pytest.mark.rule("RELOAD-15")
@pytest.mark.requires("attention_sinks")
@heavy()
@given(data=st.data())
def test_attention_sinks_stay_real_tensors_through_every_reload(impl, ref, request, data):
    """An attention layer's sinks stay the same real tensors through every reload, keep their values when not
    delivered and take the delivered ones when they are; the whole state equals the reference's [RELOAD-15]."""
    spec = data.draw(graphs_for(impl, allow_sinks=True), label="graph")
    if not any(layer.sinks for layer in spec.layers):
        spec = spec.with_(layers=(replace(spec.layers[0], sinks=True), *spec.layers[1:]))
    layouts = {role: data.draw(layouts_for(spec), label=f"{role} checkpoint") for role in ("base", "reload")}
    record_case(request, Case(request.node.nodeid, layouts=layouts))
    delivery = data.draw(st.sampled_from(SINK_DELIVERIES), label="what the reload delivers")
    scales = set(layouts["reload"].kv_scale_names)
    keep = {"everything": lambda n: True, "everything but the sinks": lambda n: not n.endswith(".sinks"),
            "the sinks only": lambda n: n.endswith(".sinks"),
            "no attention tensor": lambda n: not n.endswith(".sinks") and n not in scales}[delivery]
    weights = [(n, t) for n, t in layouts["reload"].tensors() if keep(n)]
    twin = Twin(impl, ref, spec, device=run_device()).first_load(layouts["base"].tensors)
    sinks = [f"{spec.attention_prefix(i)}sinks" for i, layer in enumerate(spec.layers) if layer.sinks]
    before = {n: t.data_ptr() for n, t in impl.kernel_tensors(twin.model).items() if n in sinks}
    twin.reload(lambda: weights)
    tensors = impl.kernel_tensors(twin.model)
    meta = [n for n, t in tensors.items() if t.is_meta]
    if meta:
        fail(f"kernel tensors after a reload delivering {delivery}", f"meta (no data): {meta[:5]}", "real tensors",
             "RELOAD-15")
    assert_equal(f"sinks' data_ptr after a reload delivering {delivery}",
                 {n: t.data_ptr() for n, t in tensors.items() if n in sinks}, before, "RELOAD-15")
    twin.check(f"kernel state after a reload delivering {delivery}", "RELOAD-15", request=request)
