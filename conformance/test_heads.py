"""HEADS: per-attention-head KV-cache scales (compressed-tensors ``kv_cache_scheme.strategy: attn_head``)."""

from __future__ import annotations

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
    snapshot,
)
from loadspec.conformance.drivers import built, graphs_for, heavy, live_pointers, run_device
from loadspec.conformance.reproducers import Case, record_case
from loadspec.reference.vocabulary import QUANTIZED_KV_DTYPES
from loadspec.strategies.heads import (
    HEAD_KINDS,
    as_per_head,
    head_checkpoint,
    head_counts,
    head_scale_name,
    head_scale_sets,
)
from loadspec.strategies.layouts import checkpoint_layouts

pytestmark = pytest.mark.requires("model", "kv_scales_per_head")

KV_DTYPES = tuple(d for d in QUANTIZED_KV_DTYPES if "e5m2" not in d)  # fp8_e5m2 is KVPROC-10's
PHASES = st.sampled_from(["first_load", "reload"])


def _case(impl, request, data, *, required=HEAD_KINDS, optional=(), min_kv_heads=1, per_head=True, roles=("base",)):
    """An attn_head graph (MHA/GQA, quantized KV cache), its compressed-tensors layout without per-tensor
    scales, and per-head values for a base and a reload checkpoint; recorded as the reproducer: the layout with
    each of ``roles``' per-head values (what the test loads, first load then reloads), so replaying it
    rebuilds those checkpoints."""
    graphs = graphs_for(impl, attention=("mha",), quant_methods=("compressed-tensors",), allow_unquantized=False,
                        kv_cache_dtypes=KV_DTYPES).filter(lambda g: g.num_kv_heads >= min_kv_heads)
    graph = data.draw(graphs, label="graph")
    spec = as_per_head(graph) if per_head else graph
    layout = data.draw(checkpoint_layouts(as_per_head(graph), producers=("compressed-tensors",),
                                          kv_scales=st.just({})), label="base checkpoint (no per-tensor scales)")
    layout = replace(layout, spec=spec)
    values = {role: data.draw(head_scale_sets(as_per_head(graph), required=required, optional=optional),
                              label=f"{role} per-head values") for role in ("base", "reload")}
    recorded = {role: replace(layout, head_scales=values[role]) if per_head else layout for role in roles}
    record_case(request, Case(request.node.nodeid, values={"per_head": values}, layouts=recorded))
    return spec, layout, values


def _record(request, values, phase: str, good, bad) -> None:
    """Record a rejection case as replay rebuilds it: the bad layout first loaded, or reloaded over the good one."""
    layouts = {"base": bad} if phase == "first_load" else {"base": good, "reload": bad}
    record_case(request, Case(request.node.nodeid, values={"per_head": values, "phase": phase}, layouts=layouts))


def _device_scales(state: dict[str, torch.Tensor], spec, index: int) -> dict[str, list[float]]:
    prefix = spec.attention_prefix(index)
    return {kind: state[f"{prefix}{kind}_scale"].float().reshape(-1).tolist() for kind in HEAD_KINDS}


def _group_max(q: tuple[float, ...], kv_heads: int) -> list[float]:
    group = len(q) // kv_heads
    return [max(q[h * group:(h + 1) * group]) for h in range(kv_heads)]


def _expected(spec, kinds: dict[str, tuple[float, ...]]) -> dict[str, list[float]]:
    """What HEADS-1 and HEADS-7 say the device scales of one layer hold."""
    ones = [1.0] * spec.num_kv_heads
    k, v = kinds.get("k"), kinds.get("v")
    k, v = k or v, v or k
    return {"q": _group_max(kinds["q"], spec.num_kv_heads) if "q" in kinds else ones,
            "k": list(k) if k else ones, "v": list(v) if v else ones}


@pytest.mark.rule("HEADS-1")
@heavy()
@given(data=st.data())
def test_per_head_scales_load_one_value_per_head(impl, ref, request, data, device):
    spec, layout, values = _case(impl, request, data)
    weights = head_checkpoint(layout, values["base"])
    state = impl.export_kernel_state(built(impl, spec, weights, device=device))
    oracle = ref.export_kernel_state(built(ref, spec, weights, device="cpu"))
    for index, kinds in values["base"].items():
        got = _device_scales(state, spec, index)
        assert_equal(f"layer {index} per-head device scales", got, _expected(spec, kinds), "HEADS-1")
        assert_equal(f"layer {index} per-head device scales vs the reference", got, _device_scales(oracle, spec, index),
                     "HEADS-1")


def _bad_shapes(spec, kind: str) -> list[tuple[int, ...]]:
    heads = head_counts(spec)[kind]
    shapes = [(), (1,), (heads + 1, 1, 1), (1, heads, 1), (2 * heads, 1, 1)]
    return [s for s in shapes if s not in ((heads, 1, 1), (heads, 1), (heads,))]


@pytest.mark.rule("HEADS-2")
@heavy()
@given(data=st.data())
def test_wrong_head_count_rejected_naming_the_weight(impl, request, data):
    spec, layout, values = _case(impl, request, data)
    kind = data.draw(st.sampled_from(HEAD_KINDS), label="kind")
    index = data.draw(st.integers(0, len(spec.layers) - 1), label="layer")
    shape = data.draw(st.sampled_from(_bad_shapes(spec, kind)), label="bad shape")
    name = head_scale_name(spec, index, kind)
    bad = replace(layout, head_scales=values["reload"], replaced=((name, shape, (0.5,) * math.prod(shape)),))
    weights = bad.tensors()
    phase = data.draw(PHASES, label="phase")
    _record(request, values, phase, replace(layout, head_scales=values["base"]), bad)
    model = (impl.build_model(spec, device=run_device()) if phase == "first_load"
             else built(impl, spec, head_checkpoint(layout, values["base"])))
    before = snapshot(impl.kernel_tensors(model), impl.host_mirrors(model))
    heads = str(head_counts(spec)[kind])
    load = impl.first_load if phase == "first_load" else impl.reload
    assert_raises_value_error(f"{phase} with {name} of shape {shape}", lambda: load(model, weights), "HEADS-2",
                              mentions=(name, str(shape), heads))
    assert_unchanged(f"model after the rejected {phase}", before,
                     snapshot(impl.kernel_tensors(model), impl.host_mirrors(model)), "HEADS-2")


@pytest.mark.rule("HEADS-3")
@heavy()
@given(data=st.data())
def test_per_head_reload_equals_a_fresh_load_in_place(impl, request, data, device):
    spec, layout, values = _case(impl, request, data, roles=("base", "reload"))
    model = built(impl, spec, head_checkpoint(layout, values["base"]), device=device)
    pointers = live_pointers(impl, model)
    new = head_checkpoint(layout, values["reload"])
    impl.reload(model, new)
    assert_equal("kernel tensors' data_ptr after a per-head reload", live_pointers(impl, model), pointers, "HEADS-3")
    fresh = built(impl, spec, new, device=device)
    assert_same_state("per-head reload vs a fresh load", impl.export_kernel_state(model),
                      impl.export_kernel_state(fresh), "HEADS-3")


@pytest.mark.rule("HEADS-4")
@heavy()
@given(data=st.data())
def test_per_head_device_scales_never_move(impl, request, data, device):
    spec, layout, values = _case(impl, request, data, roles=("base", "reload"))
    model = impl.build_model(spec, device=device)
    tensors = impl.kernel_tensors(model)
    scales = {name: t for name, t in tensors.items() if name.rsplit(".", 1)[-1] in ("_q_scale", "_k_scale", "_v_scale")}
    assert_equal("per-head device scales' shapes when built", sorted({tuple(t.shape) for t in scales.values()}),
                 [(spec.num_kv_heads,)], "HEADS-4")
    pointers = {name: t.data_ptr() for name, t in scales.items()}
    impl.first_load(model, head_checkpoint(layout, values["base"]))
    after_load = {name: t.data_ptr() for name, t in impl.kernel_tensors(model).items() if name in pointers}
    assert_equal("per-head device scales' data_ptr after the first load", after_load, pointers, "HEADS-4")
    impl.reload(model, head_checkpoint(layout, values["reload"]))
    after_reload = {name: t.data_ptr() for name, t in impl.kernel_tensors(model).items() if name in pointers}
    assert_equal("per-head device scales' data_ptr after a reload", after_reload, pointers, "HEADS-4")


@pytest.mark.rule("HEADS-5")
@heavy()
@given(data=st.data())
def test_host_mirrors_hold_the_largest_head(impl, request, data, device):
    spec, layout, values = _case(impl, request, data, roles=("base", "reload"))
    model = built(impl, spec, head_checkpoint(layout, values["base"]), device=device)
    for phase, kinds_of in (("first load", values["base"]), ("reload", values["reload"])):
        if phase == "reload":
            impl.reload(model, head_checkpoint(layout, kinds_of))
        mirrors = impl.host_mirrors(model)
        for index, kinds in kinds_of.items():
            expected = {kind: max(heads) for kind, heads in _expected(spec, kinds).items()}
            attn = spec.attention_prefix(index)
            for mirror, kind in (("_k_scale_float", "k"), ("_v_scale_float", "v"), ("_q_scale_float", "q"),
                                 ("_k_scale_cpu", "k"), ("_v_scale_cpu", "v")):
                assert_equal(f"{attn}{mirror} after the {phase}", mirrors.get(f"{attn}{mirror}"), expected[kind],
                             "HEADS-5")


@pytest.mark.rule("HEADS-6")
@heavy()
@given(data=st.data())
def test_per_tensor_config_rejects_a_per_head_checkpoint(impl, request, data):
    spec, layout, values = _case(impl, request, data, min_kv_heads=2, per_head=False)
    kind = data.draw(st.sampled_from(HEAD_KINDS), label="kind given per head")
    index = data.draw(st.integers(0, len(spec.layers) - 1), label="layer")
    name = head_scale_name(spec, index, kind)
    per_tensor = {"k": 0.5, "v": 0.25, "q": 1.0}
    given_names = {n for n, _ in layout.tensors()}
    good = replace(layout, replaced=tuple((head_scale_name(spec, i, k), (1,), (per_tensor[k],))
                                          for i in range(len(spec.layers)) for k in HEAD_KINDS
                                          if head_scale_name(spec, i, k) not in given_names))
    per_head = torch.tensor(values["reload"][index][kind]).reshape(-1, 1, 1)
    bad_layout = replace(good, replaced=tuple((n, tuple(per_head.shape), values["reload"][index][kind]) if n == name
                                              else (n, shape, v) for n, shape, v in good.replaced))
    weights, bad = good.tensors(), bad_layout.tensors()
    phase = data.draw(PHASES, label="phase")
    _record(request, values, phase, good, bad_layout)
    model = impl.build_model(spec, device=run_device()) if phase == "first_load" else built(impl, spec, weights)
    before = snapshot(impl.kernel_tensors(model), impl.host_mirrors(model))
    load = impl.first_load if phase == "first_load" else impl.reload
    assert_raises_value_error(f"{phase} with per-head {name} under a per-tensor config", lambda: load(model, bad),
                              "HEADS-6", mentions=(name, str(tuple(per_head.shape))))
    assert_unchanged(f"model after the rejected {phase}", before,
                     snapshot(impl.kernel_tensors(model), impl.host_mirrors(model)), "HEADS-6")


@pytest.mark.rule("HEADS-7")
@heavy()
@given(data=st.data())
def test_missing_per_head_scales_take_the_defaults_per_head(impl, ref, request, data, device):
    spec, layout, values = _case(impl, request, data, required=(), optional=HEAD_KINDS)
    weights = head_checkpoint(layout, values["base"])
    state = impl.export_kernel_state(built(impl, spec, weights, device=device))
    for index, kinds in values["base"].items():
        assert_equal(f"layer {index} device scales with only {sorted(kinds)} given", _device_scales(state, spec, index),
                     _expected(spec, kinds), "HEADS-7")


def _tp_expected(scale: list[float], kind: str, total_heads: int, total_kv: int, rank: int, tp: int) -> list[float]:
    per_kv = _group_max(tuple(scale), total_kv) if kind == "q" else list(scale)
    if total_kv >= tp:
        n = total_kv // tp
        return per_kv[rank * n:(rank + 1) * n]
    return [per_kv[rank // (tp // total_kv)]]


@pytest.mark.rule("HEADS-8")
@pytest.mark.requires("tp_head_slicing")
@given(data=st.data())
def test_tensor_parallel_ranks_hold_their_own_heads(impl, data):
    total_kv = data.draw(st.sampled_from([1, 2, 4, 8]), label="num_kv_heads")
    group = data.draw(st.sampled_from([1, 2, 3]), label="query heads per KV head")
    regime = data.draw(st.sampled_from(["sharded", "replicated"]), label="num_kv_heads >= tp or < tp")
    if regime == "sharded":
        tp = data.draw(st.sampled_from([d for d in (1, 2, 4, 8) if total_kv % d == 0]), label="tp_size")
    else:
        tp = total_kv * data.draw(st.sampled_from([2, 4]), label="replicas per KV head")
    kind = data.draw(st.sampled_from(HEAD_KINDS), label="kind")
    heads = total_kv * group if kind == "q" else total_kv
    scale = data.draw(st.lists(st.sampled_from([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]), min_size=heads,
                               max_size=heads), label="per-head values")
    for rank in range(tp):  # every rank: together they must hold every KV head
        got = impl.slice_head_scales(torch.tensor(scale).reshape(-1, 1, 1), kind=kind, total_heads=total_kv * group,
                                     total_kv_heads=total_kv, tp_rank=rank, tp_size=tp)
        assert_equal(f"rank {rank}/{tp} {kind} scales of {total_kv} KV heads ({scale})",
                     got.float().reshape(-1).tolist(), _tp_expected(scale, kind, total_kv * group, total_kv, rank, tp),
                     "HEADS-8")
