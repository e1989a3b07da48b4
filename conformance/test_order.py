"""ORDER: processing order on first load and reload."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadspec.conformance.assertions import fail
from loadspec.conformance.drivers import (
    attention_modules,
    built,
    close_quietly,
    draw_case,
    graphs_for,
    heavy,
    layouts_for,
    must_kv_scales,
    must_producers,
    owners,
)
from loadspec.conformance.reproducers import Case, record_case
from loadspec.reference.vocabulary import SCALE_KINDS
from loadspec.strategies.layouts import checkpoint_layouts
from loadspec.strategies.producers import PRODUCERS

pytestmark = pytest.mark.requires("model", "processing_order")

ATTENTION_FIRST = {"attention": ("mha", "mla")}


def assert_each_receiver_processed_once(what: str, order: list[str], receivers: list[str], *,
                                        processing: set[str] | None = None) -> None:
    """Every layer in ``receivers`` appears at most once in ``order``, and exactly once if it is in ``processing``
    (the layers that have a processing step; ``None``: all of them) [ORDER-2]."""
    __tracebackhide__ = True
    times = Counter(order)
    wrong = {layer: times[layer] for layer in dict.fromkeys(receivers)
             if times[layer] > 1 or (times[layer] == 0 and (processing is None or layer in processing))}
    if wrong:
        fail(f"{what}: times a layer that received weights was processed", wrong,
             "1 for each" if processing is None else f"1 for each of {sorted(processing)}, at most 1 for the others",
             "ORDER-2")


def assert_attention_last(what: str, order: list[str], spec, rule: str) -> None:
    __tracebackhide__ = True
    attention = attention_modules(spec)
    flags = [name in attention for name in order]
    if flags != sorted(flags):
        fail(f"{what} processing order", order, "every attention layer after every other layer", rule)
    if len(order) != len(set(order)):
        fail(f"{what} processing order", order, "each layer once", "ORDER-2")


def naming_every_scale(spec) -> tuple[str, ...]:
    """The MUST producers of ``spec`` that name all four KV-cache scale kinds: only with all four delivered is an
    attention layer complete before ``finish``, so only then can processing it early show [ORDER-1]."""
    return tuple(p for p in must_producers(spec)
                 if all(PRODUCERS[p].scale_name(spec.attention_prefix(0), kind) for kind in SCALE_KINDS))


def attention_scales_first(ref, spec, weights) -> list:
    """``weights`` with every tensor an attention layer owns (its KV-cache scales, in the oracle's mapping) moved to
    the front, each group in its drawn order: a loader that processes an attention layer as soon as it is complete
    would process it first."""
    attention = attention_modules(spec)
    first = [owner in attention for owner in owners(ref, spec, weights)]
    return [w for w, f in zip(weights, first, strict=True) if f] + [w for w, f in zip(weights, first, strict=True)
                                                                    if not f]


@pytest.mark.rule("ORDER-1", "ORDER-2")
@heavy()
@given(data=st.data())
def test_reload_processes_attention_last_each_layer_once(impl, ref, request, data):
    """A reload delivering every attention layer's tensors first (all four KV-cache scale kinds where a MUST
    producer of the graph names them) still processes attention after every other layer, each layer once
    [ORDER-1, ORDER-2]."""
    spec = data.draw(graphs_for(impl), label="graph")
    complete = naming_every_scale(spec)  # none (e.g. ModelOpt's names): attention completes only at finish
    reload_layouts = (checkpoint_layouts(spec, producers=complete, kv_scales=must_kv_scales(
        spec.params_dtype, required=SCALE_KINDS)) if complete else layouts_for(spec))
    layouts = {"base": data.draw(layouts_for(spec), label="base checkpoint"),
               "reload": data.draw(reload_layouts, label="reload checkpoint")}
    record_case(request, Case(request.node.nodeid, layouts=layouts))
    model = built(impl, spec, layouts["base"].tensors())
    processing = set(impl.processing_order(model))  # what the engine processes at all (a norm may have nothing)
    weights = attention_scales_first(ref, spec, layouts["reload"].tensors())
    impl.reload(model, weights)
    order = impl.processing_order(model)
    assert_each_receiver_processed_once("reload", order, owners(ref, spec, weights), processing=processing)
    assert_attention_last("reload", order, spec, "ORDER-1")


@pytest.mark.rule("ORDER-2", "ORDER-3")
@heavy()
@given(data=st.data())
def test_first_load_processes_attention_last(impl, ref, request, data):
    spec, layouts = draw_case(impl, request, data, "base")
    weights = layouts["base"].tensors()
    model = built(impl, spec, weights)
    order = impl.processing_order(model)
    # A first load runs processing only where there is some (vLLM: modules with a quant method; a norm has none).
    assert_each_receiver_processed_once("first load", order, owners(ref, spec, weights), processing=set())
    assert_attention_last("first load", order, spec, "ORDER-3")


@pytest.mark.rule("ORDER-4")
@pytest.mark.requires("reload_sessions")
@heavy()
@given(data=st.data())
def test_layer_processed_when_its_last_element_arrives(impl, ref, request, data):
    spec, layouts = draw_case(impl, request, data, "base", "reload")
    model = built(impl, spec, layouts["base"].tensors())
    weights = layouts["reload"].tensors()
    receivers = owners(ref, spec, weights)
    attention = attention_modules(spec)
    session = impl.open_reload(model)
    for position, (name, tensor) in enumerate(weights):
        session.load([(name, tensor)])
        owner = receivers[position]
        if owner in attention:
            continue
        last = owner not in receivers[position + 1:]
        order = impl.processing_order(model)
        if (owner in order) != last:
            close_quietly(session)
            fail(f"processing order after delivering {name} ({'the last' if last else 'not the last'} weight of "
                 f"{owner})", order, f"{'a list holding ' if last else 'no '}{owner}", "ORDER-4")
    session.finish()
