"""LOAD: the default loader and the automatic loader."""

from __future__ import annotations

import json
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
    real_model_options,
    run_device,
)
from loadspec.conformance.oracle import Twin, assert_mirrors_match_scales
from loadspec.conformance.reproducers import Case, record_case
from loadspec.reference.spec import ModelSpec, uniform_layers
from loadspec.strategies.layouts import CheckpointLayout
from loadspec.strategies.requantize import near_midpoint_scales


def tree() -> torch.nn.Module:
    """``layers.0.self_attn.{o_proj.weight, attn}`` and ``layers.0.norm.weight``, with two buffers.

    One buffer is persistent, the other not.
    """
    root = torch.nn.Module()
    layer = torch.nn.Module()
    root.layers = torch.nn.ModuleList([layer])
    layer.self_attn = torch.nn.Module()
    layer.self_attn.o_proj = torch.nn.Linear(2, 3, bias=False)
    layer.self_attn.attn = torch.nn.Module()
    layer.norm = torch.nn.Module()
    layer.norm.weight = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
    layer.norm.register_buffer("kept", torch.zeros(2), persistent=True)
    layer.norm.register_buffer("scratch", torch.zeros(2), persistent=False)
    for p in root.parameters():
        p.requires_grad_(False)
    return root


def tree_state(module: torch.nn.Module) -> dict:
    return snapshot({**dict(module.named_parameters()), **dict(module.named_buffers())})


@pytest.mark.rule("LOAD-1")
@pytest.mark.requires("primitives")
@pytest.mark.parametrize("param_shape, weight_shape", [((), (1,)), ((1,), ()), ((1, 1), (1, 1, 1))], ids=str)
def test_one_element_loads_whatever_the_shapes(impl, param_shape, weight_shape):
    param = torch.nn.Parameter(torch.zeros(param_shape), requires_grad=False)
    counted = impl.count_copies(impl.default_weight_loader, param, torch.full(weight_shape, 2.5))
    assert_equal(f"{param_shape} param after loading {weight_shape}", param.reshape(()).item(), 2.5, "LOAD-1")
    assert_equal("elements counted", counted, 1, "LOAD-1")


@pytest.mark.rule("LOAD-2")
@pytest.mark.requires("primitives")
def test_shape_mismatch_names_both_shapes(impl):
    param = torch.nn.Parameter(torch.zeros(2, 3), requires_grad=False)
    assert_raises_value_error("loading (3, 2) into (2, 3)", lambda: impl.default_weight_loader(param, torch.ones(3, 2)),
                              "LOAD-2", mentions=["3, 2", "2, 3"])
    assert_equal("parameter after a rejected load", param.tolist(), torch.zeros(2, 3).tolist(), "LOAD-2")


@pytest.mark.rule("LOAD-3")
@pytest.mark.requires("primitives")
def test_returns_the_names_loaded(impl):
    weights = [("layers.0.self_attn.o_proj.weight", torch.ones(3, 2)), ("layers.0.norm.weight", torch.ones(3))]
    loaded = impl.auto_load(tree(), weights)
    assert_equal("names returned", set(loaded), {n for n, _ in weights}, "LOAD-3")
    renamed = [("old.0.self_attn.o_proj.weight", torch.ones(3, 2)), ("layers.0.norm.kept", torch.ones(2))]
    loaded = impl.auto_load(tree(), renamed, mapper=impl.make_mapper(prefix={"old.": "layers."}))
    assert_equal("names returned for a mapped checkpoint with a persistent buffer", set(loaded),
                 {"layers.0.self_attn.o_proj.weight", "layers.0.norm.kept"}, "LOAD-3")


@pytest.mark.rule("LOAD-4")
@pytest.mark.requires("primitives")
def test_unknown_name_rejected_naming_it(impl):
    assert_raises_value_error("loading an unknown name", lambda: impl.auto_load(
        tree(), [("layers.0.self_attn.qk_proj.weight", torch.ones(3, 2))]), "LOAD-4", mentions=["qk_proj"])


@pytest.mark.rule("LOAD-5")
@pytest.mark.requires("primitives", "skip_rules")
def test_skip_rules_see_mapped_names(impl):
    mapper = impl.make_mapper(prefix={"old.": "layers."})
    weights = [("old.0.self_attn.o_proj.weight", torch.ones(3, 2)), ("old.0.norm.weight", torch.ones(3))]
    loaded = impl.auto_load(tree(), weights, mapper=mapper, skip_prefixes=("layers.0.norm.",))
    assert_equal("names loaded with skip_prefixes on the mapped name", set(loaded),
                 {"layers.0.self_attn.o_proj.weight"}, "LOAD-5")


@pytest.mark.rule("LOAD-6")
@pytest.mark.requires("primitives")
@pytest.mark.parametrize("bad", ["unknown", "shape"])
def test_rejected_load_leaves_the_tree_unchanged(impl, bad):
    module = tree()
    before = tree_state(module)
    weights = [("layers.0.self_attn.o_proj.weight", torch.ones(3, 2)), ("layers.0.norm.weight", torch.ones(3))]
    weights.append(("layers.0.nope.weight", torch.ones(1)) if bad == "unknown" else
                   ("layers.0.norm.kept", torch.ones(5)))
    try:
        impl.auto_load(module, weights)
    except Exception:  # noqa: BLE001 - the rejection itself is LOAD-2/LOAD-4's business
        pass
    assert_unchanged("module after a rejected load", before, tree_state(module), "LOAD-6")


@pytest.mark.rule("LOAD-6")
@pytest.mark.requires("model")
@heavy()
@given(data=st.data())
def test_rejected_reload_leaves_the_model_unchanged(impl, request, data):
    spec = data.draw(graphs_for(impl), label="graph")
    base = data.draw(layouts_for(spec), label="base checkpoint")
    bad = data.draw(layouts_for(spec, allow_extra=True).filter(lambda layout: layout.extra),
                    label="reload checkpoint with an unknown tensor")
    record_case(request, Case(request.node.nodeid, layouts={"base": base, "reload": bad}))
    model = built(impl, spec, base.tensors())
    before = snapshot(impl.kernel_tensors(model), impl.host_mirrors(model))
    try:
        impl.reload(model, bad.tensors())
    except Exception:  # noqa: BLE001
        pass
    else:
        fail(f"reloading {bad.extra[0][0]!r}", "accepted", "a rejection", "LOAD-4")
    assert_unchanged("model after a rejected reload", before,
                     snapshot(impl.kernel_tensors(model), impl.host_mirrors(model)), "LOAD-6")


@pytest.mark.rule("LOAD-7")
@pytest.mark.requires("model")
@heavy()
@given(data=st.data())
def test_first_load_with_missing_weights_rejected(impl, request, data):
    spec = data.draw(graphs_for(impl), label="graph")
    layout = data.draw(layouts_for(spec, allow_missing=True).filter(
        lambda layout: any(not name.endswith("_scale") for name in layout.missing)), label="checkpoint")
    record_case(request, Case(request.node.nodeid, layouts={"base": layout}))
    missing = next(name for name in layout.missing if not name.endswith("_scale"))
    stem = missing.rsplit(".", 2)[0]
    model = impl.build_model(spec, device=run_device())
    assert_raises_value_error(f"first load without {missing}", lambda: impl.first_load(model, layout.tensors()),
                              "LOAD-7", mentions=[stem])


@pytest.mark.rule("LOAD-8")
@pytest.mark.requires("primitives")
def test_scales_are_never_dropped_silently(impl):
    name = "layers.0.self_attn.k_scale"

    def load() -> set[str]:
        return impl.auto_load(tree(), [(name, torch.tensor(0.5))], quant_method="fp8")

    try:
        loaded = load()
    except Exception:  # noqa: BLE001 - a rejection: it must be a ValueError naming the scale
        assert_raises_value_error(f"loading {name} into a module without a KV-cache method", load, "LOAD-8",
                                  mentions=["k_scale"])
        return
    fail("a k_scale with no parameter to receive it", f"silently dropped (loaded {sorted(loaded)})",
         "loaded, or a ValueError naming it", "LOAD-8")


@pytest.mark.rule("LOAD-9")
@pytest.mark.requires("primitives")
def test_persistent_buffers_loadable_non_persistent_not(impl):
    module = tree()
    impl.auto_load(module, [("layers.0.norm.kept", torch.ones(2))])
    assert_equal("persistent buffer after loading", module.layers[0].norm.kept.tolist(), [1.0, 1.0], "LOAD-9")
    assert_raises_value_error("loading a non-persistent buffer", lambda: impl.auto_load(
        module, [("layers.0.norm.scratch", torch.ones(2))]), "LOAD-9", mentions=["scratch"])


@pytest.mark.rule("LOAD-10")
@pytest.mark.requires("primitives")
def test_name_below_a_parameter_rejected(impl):
    assert_raises_value_error("loading below a parameter", lambda: impl.auto_load(
        tree(), [("layers.0.norm.weight.extra", torch.ones(1))]), "LOAD-10", mentions=["weight.extra"])


# ------------------------------------------------------- validation before any write (issue 14)
def _model_state(impl, model) -> dict:
    return snapshot(impl.kernel_tensors(model), impl.host_mirrors(model))


def _rejected_before_any_write(impl, spec, base, weights, phase, what, rule, mentions):
    """``weights`` are rejected by a first load (of a fresh model) or a reload (of ``base``), naming
    ``mentions``, and the model is bit-identical afterwards."""
    model = impl.build_model(spec, device=run_device()) if phase == "first_load" else built(impl, spec, base.tensors())
    before = _model_state(impl, model)
    call = (impl.first_load if phase == "first_load" else impl.reload)
    assert_raises_value_error(f"{phase} with {what}", lambda: call(model, weights), rule, mentions=mentions)
    assert_unchanged(f"model after the rejected {phase} with {what}", before, _model_state(impl, model), rule)


FP8_OPTIONS = {"linear_quants": ("fp8_per_tensor", "fp8_per_channel"), "quant_methods": ("fp8",),
               "allow_unquantized": False}


def _fp8_case(impl, request, data):
    fp8 = tuple(q for q in FP8_OPTIONS["linear_quants"] if q in impl.capabilities)
    if not fp8:
        pytest.skip("needs capability fp8_per_tensor or fp8_per_channel (a checkpoint with FP8 weights)")
    return draw_case(impl, request, data, "base", "new", **{**FP8_OPTIONS, "linear_quants": fp8})


PHASES = st.sampled_from(["first_load", "reload"])


@pytest.mark.rule("LOAD-11")
@pytest.mark.requires("model")
@heavy()
@given(data=st.data())
def test_dtype_mismatch_rejected_before_any_write(impl, request, data):
    spec, layouts = _fp8_case(impl, request, data)
    weights = layouts["new"].tensors()
    kinds = {"fp8 weight": [n for n, t in weights if t.dtype == torch.float8_e4m3fn],
             "float weight": [n for n, t in weights if n.endswith("norm.weight")],
             "scale": [n for n, t in weights if n.endswith("weight_scale")]}
    kind = data.draw(st.sampled_from([k for k, names in kinds.items() if names]), label="parameter kind")
    name = data.draw(st.sampled_from(kinds[kind]), label="weight")
    dtypes = {"fp8 weight": [torch.float8_e5m2, torch.bfloat16, torch.float32, torch.int8],
              "float weight": [torch.int64, torch.bool, torch.complex64, torch.float8_e4m3fn],
              "scale": [torch.int32, torch.bool, torch.float8_e4m3fn]}[kind]
    dtype = data.draw(st.sampled_from(dtypes), label="dtype")
    original = dict(weights)[name]
    bad = torch.ones(original.shape, dtype=dtype)
    _rejected_before_any_write(impl, spec, layouts["base"], [(n, bad if n == name else t) for n, t in weights],
                               data.draw(PHASES, label="phase"), f"a {dtype} {name}", "LOAD-11", [name])


HOSTILE = [math.nan, math.inf, -math.inf, 0.0, -0.5, -1.0]


@pytest.mark.rule("LOAD-12")
@pytest.mark.requires("model")
@heavy()
@given(data=st.data())
def test_bad_linear_scale_rejected_before_any_write(impl, request, data):
    spec, layouts = _fp8_case(impl, request, data)
    weights = layouts["new"].tensors()
    scales = [n for n, _ in weights if n.endswith(("weight_scale", "input_scale"))]
    name = data.draw(st.sampled_from(scales), label="linear scale")
    value = data.draw(st.sampled_from([*HOSTILE, 1e38]), label="value")
    original = dict(weights)[name]
    bad = original.clone().reshape(-1)
    bad[data.draw(st.integers(0, bad.numel() - 1), label="element")] = value
    bad = bad.reshape(original.shape)
    _rejected_before_any_write(impl, spec, layouts["base"], [(n, bad if n == name else t) for n, t in weights],
                               data.draw(PHASES, label="phase"), f"{name} holding {value}", "LOAD-12", [name])


@pytest.mark.rule("LOAD-13")
@pytest.mark.requires("model")
@heavy()
@given(data=st.data())
def test_bad_kv_scale_in_a_checkpoint_rejected_before_any_write(impl, request, data):
    spec, layouts = draw_case(impl, request, data, "base", "new", allow_unquantized=False)
    value = data.draw(st.sampled_from(HOSTILE), label="k_scale value (-1.0: the sentinel)")
    new = replace(layouts["new"], kv_scales={**layouts["new"].kv_scales, "k": value, "v": value})  # fused kv_scale
    names = [n for n in new.kv_scale_names if n.startswith(spec.layer_prefix(0))]
    _rejected_before_any_write(impl, spec, layouts["base"], new.tensors(), data.draw(PHASES, label="phase"),
                               f"k_scale=v_scale={value} in every layer", "LOAD-13", [])
    assert names  # the layout wrote layer 0's k_scale, so there was something to reject


@pytest.mark.rule("LOAD-14")
@pytest.mark.requires("model")
@heavy()
@given(data=st.data())
def test_two_sources_for_one_parameter_rejected_naming_both(impl, request, data):
    spec, layouts = draw_case(impl, request, data, "base", "new")
    weights = layouts["new"].tensors()
    by_name = dict(weights)
    kinds = ["same name twice"]
    q, k, v = (f"{spec.layer_prefix(0)}{spec.container}.{p}_proj.weight" for p in "qkv")
    if spec.attention == "mha" and all(n in by_name for n in (q, k, v)):
        kinds.append("engine-format qkv_proj beside q/k/v_proj")
    if spec.tie_embeddings:
        kinds.append("lm_head beside the tied embedding")
    kind = data.draw(st.sampled_from(kinds), label="duplicate")
    if kind == "same name twice":
        name = data.draw(st.sampled_from([n for n, _ in weights]), label="weight given twice")
        extra, mentions = (name, by_name[name].clone()), [name]
    elif kind.startswith("engine-format"):
        fused = f"{spec.layer_prefix(0)}{spec.container}.qkv_proj.weight"
        qkv = torch.cat([by_name[n].float() for n in (q, k, v)]).to(by_name[q].dtype)
        extra, mentions = (fused, qkv), [fused, q]
    else:
        embed = f"{spec.prefix}embed_tokens.weight"
        extra, mentions = (spec.lm_head_name, by_name[embed].clone()), [spec.lm_head_name, embed]
    _rejected_before_any_write(impl, spec, layouts["base"], [*weights, extra], data.draw(PHASES, label="phase"),
                               kind, "LOAD-14", mentions)


@pytest.mark.rule("LOAD-15")
@pytest.mark.requires("model")
@heavy()
@given(data=st.data())
def test_output_scale_buffers_not_loadable_by_name(impl, request, data):
    spec, layouts = draw_case(impl, request, data, "base", "new")
    buffer = data.draw(st.sampled_from(["_k_scale", "_v_scale", "_q_scale", "_prob_scale"]), label="buffer")
    name = f"{spec.attention_prefix(0)}{buffer}"
    value = data.draw(st.sampled_from([math.nan, 0.5]), label="value")
    _rejected_before_any_write(impl, spec, layouts["base"], [*layouts["new"].tensors(), (name, torch.tensor(value))],
                               data.draw(PHASES, label="phase"), f"{name}={value}", "LOAD-15", [name])


DAMAGES = ["truncated shard", "index entry outside the directory"]


def damage_directory(directory, damage: str) -> str:
    """Damage a sharded checkpoint directory in place; return what the error must name."""
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name, shard = sorted(index["weight_map"].items())[-1]
    if damage == "truncated shard":
        data = (directory / shard).read_bytes()
        (directory / shard).write_bytes(data[: len(data) // 2])
        return shard
    sibling = directory.parent / "sibling"  # a valid copy of the shard, next to (outside) the checkpoint
    sibling.mkdir()
    (sibling / shard).write_bytes((directory / shard).read_bytes())
    index["weight_map"][name] = f"../sibling/{shard}"
    index_path.write_text(json.dumps(index))
    return "sibling"


@pytest.mark.rule("LOAD-16")
@pytest.mark.requires("model", "fp8_per_tensor")
@pytest.mark.parametrize("call", ["first_load", "reload"])
@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_checkpoint_directory_is_rejected_before_any_write(impl, tmp_path, damage, call):
    """A truncated shard, or an index naming a file outside the directory, is a ValueError naming it [LOAD-16]."""
    spec = ModelSpec(layers=uniform_layers(2, qkv_quant="fp8_per_tensor", down_quant="fp8_per_tensor"))
    layout = CheckpointLayout(spec, producer="autofp8", kv_scales={"k": 0.5, "v": 0.25}, max_shard_size=4096)
    directory = layout.write(tmp_path / "checkpoint")
    if call == "reload":
        model = built(impl, spec, layout.tensors())
    else:
        model = impl.build_model(spec, device=run_device())
    names = damage_directory(directory, damage)
    before = snapshot(impl.kernel_tensors(model), impl.host_mirrors(model))
    assert_raises_value_error(f"{call} of a checkpoint directory ({damage})",
                              lambda: getattr(impl, call)(model, directory), "LOAD-16", mentions=(names,))
    assert_unchanged(f"model after a rejected {call}", before,
                     snapshot(impl.kernel_tensors(model), impl.host_mirrors(model)), "LOAD-16")


# ------------------------------------------------------- the oracle: whole kernel states (issue 15)
QUANTIZED_KV = {"kv_cache_dtypes": ("fp8", "fp8_e4m3"), "allow_unquantized": False}  # scales the kernels read
@pytest.mark.rule("LOAD-17")
@pytest.mark.requires("model")
@heavy()
@given(data=st.data())
def test_first_load_gives_the_reference_kernel_state(impl, ref, request, data):
    """Every exported tensor of a first load equals the reference's, bit for bit [LOAD-17]."""
    spec, layouts = draw_case(impl, request, data, "base", **real_model_options(impl))
    Twin(impl, ref, spec, device=run_device()).first_load(layouts["base"].tensors).check(
        "kernel state after a first load", "LOAD-17", request=request)


@pytest.mark.rule("LOAD-20")
@pytest.mark.requires("model", "fp8_per_tensor")
@heavy()
@given(data=st.data())
def test_fused_shards_are_requantized_exactly(impl, ref, request, data):
    """Fused per-tensor FP8 shards re-quantized to their largest scale match the reference byte for byte, on shard
    scales that put every power-of-two byte just past an e4m3 rounding midpoint [LOAD-20]."""
    spec, layouts = draw_case(impl, request, data, "base", linear_quants=("fp8_per_tensor",), allow_unquantized=False,
                              min_layers=2, max_hidden=64, **real_model_options(impl))
    layout = data.draw(near_midpoint_scales(layouts["base"]), label="shard scales near a rounding midpoint")
    record_case(request, Case(request.node.nodeid, layouts={"base": layout}))
    Twin(impl, ref, spec, device=run_device()).first_load(layout.tensors).check(
        "kernel state after a first load", "LOAD-20", request=request, tolerances=())


@pytest.mark.rule("LOAD-18")
@pytest.mark.requires("model", "host_mirrors")
@heavy()
@given(data=st.data())
def test_host_mirrors_equal_device_scales_after_first_and_dummy_load(impl, request, data):
    """After a first load and after a dummy load each q/k/v host mirror exists and equals its device scale [LOAD-18]."""
    spec, layouts = draw_case(impl, request, data, "base", **QUANTIZED_KV)
    assert_mirrors_match_scales("after a first load", impl, built(impl, spec, layouts["base"].tensors()), spec,
                                "LOAD-18", request=request)
    dummy = impl.build_model(spec, device=run_device())
    impl.dummy_load(dummy)
    assert_mirrors_match_scales("after a dummy load", impl, dummy, spec, "LOAD-18", request=request)


@pytest.mark.rule("LOAD-6")
@pytest.mark.requires("model")
@heavy()
@given(data=st.data())
def test_multi_element_kv_scale_rejected_naming_it_model_unchanged(impl, request, data):
    """A KV-cache scale of (2,) or per-head (H, 1, 1) / (H,) shape in a checkpoint is rejected by a first load, a
    reload and a reload session with a ValueError naming the weight, and the whole model is unchanged [LOAD-6]."""
    spec, layouts = draw_case(impl, request, data, "base", "new", allow_unquantized=False)
    new = layouts["new"]
    name = data.draw(st.sampled_from(new.kv_scale_names), label="scale given several elements")
    heads = max(spec.num_kv_heads, 2)  # per KV head, as compressed-tensors' attn_head strategy stores them
    shape = data.draw(st.sampled_from([(2,), (heads, 1, 1), (heads,)]), label="its shape")
    weights = [(n, torch.full(shape, 0.5, dtype=t.dtype) if n == name else t) for n, t in new.tensors()]
    phases = ["first_load", "reload"] + (["reload session"] if "reload_sessions" in impl.capabilities else [])
    phase = data.draw(st.sampled_from(phases), label="phase")
    what = f"{name} of shape {shape}"
    if phase != "reload session":
        _rejected_before_any_write(impl, spec, layouts["base"], weights, phase, what, "LOAD-6", [name])
        return
    model = built(impl, spec, layouts["base"].tensors())
    before = _model_state(impl, model)
    session = impl.open_reload(model)
    try:
        assert_raises_value_error(f"reload session given {what}", lambda: session.load(weights), "LOAD-6",
                                  mentions=[name])
    finally:
        close_quietly(session)
    assert_unchanged(f"model after a session rejected {what}", before, _model_state(impl, model), "LOAD-6")


# ------------------------------------------------------- tied models whose checkpoint carries both names
@pytest.mark.rule("LOAD-19")
@pytest.mark.requires("model", "tied_embeddings")
@heavy()
@given(data=st.data())
def test_tied_checkpoint_with_lm_head_does_not_depend_on_order(impl, request, data):
    """A tied model's checkpoint that also carries a (different) lm_head.weight gives the same outcome whatever
    the order of the two tensors: rejected both ways, or loaded to the same kernel state [LOAD-19]."""
    spec, layouts = draw_case(impl, request, data, "base", "new", allow_tied=True)
    if not spec.tie_embeddings:
        spec = spec.with_(tie_embeddings=True)
        layouts = {role: replace(layout, spec=spec) for role, layout in layouts.items()}
        record_case(request, Case(request.node.nodeid, layouts=layouts))
    weights = layouts["new"].tensors()
    embed = dict(weights)[f"{spec.prefix}embed_tokens.weight"]
    head = (spec.lm_head_name, (embed.float() + 0.25).to(embed.dtype))  # a different value for the same tensor
    phase = data.draw(PHASES, label="phase")
    outcomes = {}
    for order, delivery in (("lm_head.weight first", [head, *weights]), ("lm_head.weight last", [*weights, head])):
        model = impl.build_model(spec, device=run_device()) if phase == "first_load" else built(
            impl, spec, layouts["base"].tensors())
        try:
            (impl.first_load if phase == "first_load" else impl.reload)(model, delivery)
        except ValueError as exc:
            outcomes[order] = ("rejected", str(exc).splitlines()[0][:200])
        except Exception as exc:  # noqa: BLE001
            fail(f"{phase} with {order}", f"{type(exc).__name__}: {exc}", "a ValueError or a load", "LOAD-19")
        else:
            outcomes[order] = ("loaded", impl.export_kernel_state(model))
    (first, a), (last, b) = outcomes.values()
    assert_equal(f"{phase} of a tied checkpoint with lm_head.weight last vs first", last, first, "LOAD-19")
    if first == "loaded":
        assert_same_state(f"kernel state after a {phase} with lm_head.weight last vs first", b, a, "LOAD-19")
