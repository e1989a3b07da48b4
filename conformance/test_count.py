"""COUNT: copy counting, directly and as it decides when a layer is processed."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from loadspec.conformance.assertions import assert_equal, fail
from loadspec.conformance.drivers import attention_modules, built, close_quietly, draw_case, heavy, owners
from loadspec.conformance.oracle import assert_same_as_reference
from loadspec.reference.vocabulary import FP8_DTYPE

SHAPES = st.lists(st.integers(1, 5), max_size=3).map(tuple)
COPY_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64, FP8_DTYPE, torch.int8)
"""Element sizes 1, 2, 4 and 8: a counter of bytes or of calls is wrong for all but one of them."""


@pytest.mark.rule("COUNT-1")
@pytest.mark.requires("primitives")
@given(shape=SHAPES, dtype=st.sampled_from(COPY_DTYPES))
def test_copy_counts_every_element(impl, shape, dtype):
    destination = torch.zeros(shape, dtype=dtype)
    counted = impl.count_copies(destination.copy_, torch.ones(shape, dtype=dtype))
    assert_equal(f"elements counted copying {shape} {dtype}", counted, destination.numel(), "COUNT-1")


@pytest.mark.rule("COUNT-2")
@pytest.mark.requires("primitives")
@pytest.mark.parametrize("write", ["fill_", "zero_", "index_copy_"])
def test_other_writes_are_not_counted(impl, write):
    destination = torch.zeros(4)
    calls = {"fill_": lambda: destination.fill_(1.0), "zero_": destination.zero_,
             "index_copy_": lambda: destination.index_copy_(0, torch.tensor([0, 1]), torch.ones(2))}
    assert_equal(f"elements counted by {write}", impl.count_copies(calls[write]), 0, "COUNT-2")


@pytest.mark.rule("COUNT-5")
@pytest.mark.requires("primitives")
def test_broadcasting_copy_counts_the_destination(impl):
    destination = torch.zeros(3, 4)
    try:
        counted = impl.count_copies(destination.copy_, torch.ones(4))
    except Exception as exc:  # noqa: BLE001
        fail("counting a broadcasting copy_", f"{type(exc).__name__}: {exc}", 12, "COUNT-5")
    assert_equal("elements counted by a broadcasting copy_", counted, 12, "COUNT-5")


def draw(impl, request, data):
    return draw_case(impl, request, data, "base", "reload", attention=("mha",))


def write_times(times: int, region):
    """A weight loader that copies the loaded weight into ``param[region]`` ``times`` times."""
    def loader(param, loaded_weight):
        for _ in range(times):
            param.data[region].copy_(loaded_weight[region])
    return loader


@pytest.mark.rule("COUNT-3")
@pytest.mark.requires("reload_sessions")
@given(shape=SHAPES.filter(lambda s: math.prod(s) > 0), times=st.integers(1, 3))
def test_a_loader_writing_a_parameter_twice_counts_it_once(impl, shape, times):
    param = torch.nn.Parameter(torch.zeros(shape), requires_grad=False)
    counted = impl.count_loader_call(write_times(times, ...), param, torch.ones(shape))
    assert_equal(f"elements credited to a {shape} parameter its loader wrote {times} time(s)", counted,
                 param.numel(), "COUNT-3")


@pytest.mark.rule("COUNT-6")
@pytest.mark.requires("reload_sessions")
def test_a_region_written_twice_is_not_the_whole_parameter(impl):
    param = torch.nn.Parameter(torch.zeros(4, 3), requires_grad=False)
    counted = impl.count_loader_call(write_times(2, slice(0, 2)), param, torch.ones(4, 3))
    assert_equal("elements credited for rows 0-1 of a (4, 3) parameter written twice", counted, 6, "COUNT-6")


@pytest.mark.rule("COUNT-6")
@pytest.mark.requires("model", "reload_sessions", "processing_order")
@heavy()
@given(data=st.data())
def test_a_weight_delivered_twice_counts_once(impl, ref, request, data):
    spec, layouts = draw(impl, request, data)
    weights = layouts["reload"].tensors()
    model = built(impl, spec, layouts["base"].tensors())
    fused = f"{spec.layer_prefix(0)}{spec.container}.qkv_proj"
    q_name = f"{spec.layer_prefix(0)}{spec.container}.q_proj.weight"
    q = dict(weights)[q_name]
    session = impl.open_reload(model)
    session.load([(q_name, q)])
    session.load([(q_name, q)])
    session.load([(q_name, q)])
    order = impl.processing_order(model)
    if fused in order:
        close_quietly(session)
        fail(f"processing order after {fused} received only its q shard (three times)", order,
             f"no {fused} yet", "COUNT-6")
    session.load([(n, t) for n, t in weights if n != q_name])
    session.finish()
    oracle = built(ref, spec, layouts["base"].tensors())
    ref.reload(oracle, weights)
    assert_same_as_reference("kernel state after the reload", impl.export_kernel_state(model),
                             ref.export_kernel_state(oracle), "COUNT-6", request=request)


@pytest.mark.rule("COUNT-4")
@pytest.mark.requires("model", "reload_sessions", "processing_order")
@heavy()
@given(data=st.data())
def test_a_layer_counts_complete_exactly_when_its_last_element_arrives(impl, ref, request, data):
    spec, layouts = draw_case(impl, request, data, "base", "reload")
    weights = layouts["reload"].tensors()
    receivers = owners(ref, spec, weights)
    attention = attention_modules(spec)
    held = data.draw(st.sampled_from([i for i, owner in enumerate(receivers) if owner not in attention]),
                     label="position of the weight held back")
    layer, name = receivers[held], weights[held][0]
    model = built(impl, spec, layouts["base"].tensors())
    session = impl.open_reload(model)
    try:
        session.load([weight for i, weight in enumerate(weights) if i != held])
    except ValueError as exc:  # e.g. a layer processed early rejecting its next shard [RELOAD-9]
        close_quietly(session)
        fail(f"delivering every weight but {name} in one load call", f"{type(exc).__name__}: {exc}",
             "no rejection: every weight is delivered once", "COUNT-4")
    processed = impl.processing_order(model)
    complete = {owner for owner in receivers if owner not in attention and owner != layer}
    if complete - set(processed) or layer in processed:
        close_quietly(session)
        fail(f"layers processed with every weight delivered but {name}", processed,
             f"every non-attention layer that got all its elements ({sorted(complete)}), and not {layer}", "COUNT-4")
    session.load([weights[held]])
    processed = impl.processing_order(model)
    session.finish()
    if layer not in processed:
        fail(f"layers processed once {name} arrived too", processed, f"a list holding {layer}", "COUNT-4")
