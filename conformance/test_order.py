"""ORDER: processing order on first load and reload."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadspec.conformance.assertions import assert_equal, fail
from loadspec.conformance.drivers import built, close_quietly, draw_case, heavy, layer_of

pytestmark = pytest.mark.requires("model", "processing_order")

ATTENTION_FIRST = {"attention": ("mha", "mla")}


# Checkpoint projections -> the canonical fused layers that own them (README, "Canonical names"; MLA keeps q_proj).
FUSED_MLP = {".gate_proj.": (".gate_up_proj.", 0), ".up_proj.": (".gate_up_proj.", 1)}
FUSED_QKV = {".q_proj.": (".qkv_proj.", "q"), ".k_proj.": (".qkv_proj.", "k"), ".v_proj.": (".qkv_proj.", "v")}


def canonical_mapper(ref, spec):
    """``spec``'s checkpoint names -> canonical names in the oracle's mappers: fused projections | cache scales."""
    fused = ref.make_mapper(stacked={**FUSED_QKV, **FUSED_MLP} if spec.attention == "mha" else FUSED_MLP)
    return ref.compose_mappers(fused, ref.cache_scale_mapper(spec.quant_method)) if spec.quant_method else fused


def attention_modules(spec) -> set[str]:
    return {spec.attention_prefix(i)[:-1] for i in range(len(spec.layers))}


def assert_attention_last(what: str, order: list[str], spec, rule: str) -> None:
    __tracebackhide__ = True
    attention = attention_modules(spec)
    flags = [name in attention for name in order]
    if flags != sorted(flags):
        fail(f"{what} processing order", order, "every attention layer after every other layer", rule)
    if len(order) != len(set(order)):
        fail(f"{what} processing order", order, "each layer once", "ORDER-2")


@pytest.mark.rule("ORDER-1", "ORDER-2")
@heavy()
@given(data=st.data())
def test_reload_processes_attention_last_each_layer_once(impl, request, data):
    spec, layouts = draw_case(impl, request, data, "base", "reload")
    model = built(impl, spec, layouts["base"].tensors())
    impl.reload(model, layouts["reload"].tensors())
    order = impl.processing_order(model)
    assert_attention_last("reload", order, spec, "ORDER-1")
    processed_attention = attention_modules(spec) & set(order)
    assert_equal("attention layers processed in the reload", processed_attention, attention_modules(spec)
                 if spec.quant_method else processed_attention, "ORDER-2")


@pytest.mark.rule("ORDER-3")
@heavy()
@given(data=st.data())
def test_first_load_processes_attention_last(impl, request, data):
    spec, layouts = draw_case(impl, request, data, "base")
    model = built(impl, spec, layouts["base"].tensors())
    assert_attention_last("first load", impl.processing_order(model), spec, "ORDER-3")


@pytest.mark.rule("ORDER-4")
@pytest.mark.requires("reload_sessions")
@heavy()
@given(data=st.data())
def test_layer_processed_when_its_last_element_arrives(impl, ref, request, data):
    spec, layouts = draw_case(impl, request, data, "base", "reload")
    model = built(impl, spec, layouts["base"].tensors())
    weights = layouts["reload"].tensors()
    mapper = canonical_mapper(ref, spec)
    owners = [layer_of(ref.map_name(mapper, name)[0]) for name, _ in weights]
    if spec.tie_embeddings:
        owners = [f"{spec.prefix}embed_tokens" if o == layer_of(spec.lm_head_name) else o for o in owners]
    attention = attention_modules(spec)
    session = impl.open_reload(model)
    for position, (name, tensor) in enumerate(weights):
        session.load([(name, tensor)])
        owner = owners[position]
        if owner in attention:
            continue
        last = owner not in owners[position + 1:]
        done = owner in impl.processing_order(model)
        if done != last:
            close_quietly(session)
            fail(f"{owner} processed after delivering {name}", done, last, "ORDER-4")
    session.finish()
