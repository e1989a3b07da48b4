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
    heavy,
    owners,
)

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


@pytest.mark.rule("ORDER-1", "ORDER-2")
@heavy()
@given(data=st.data())
def test_reload_processes_attention_last_each_layer_once(impl, ref, request, data):
    spec, layouts = draw_case(impl, request, data, "base", "reload")
    model = built(impl, spec, layouts["base"].tensors())
    processing = set(impl.processing_order(model))  # what the engine processes at all (a norm may have nothing)
    weights = layouts["reload"].tensors()
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
