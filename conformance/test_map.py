"""MAP: weight-name mapping and mapper composition, checked against the reference mapper."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from loadspec.conformance.assertions import assert_equal, fail
from loadspec.conformance.drivers import mapper_in
from loadspec.reference.vocabulary import QUANT_METHODS
from loadspec.strategies.mappers import mappers, weight_names

pytestmark = pytest.mark.requires("primitives")


def mapped(impl, name, **entries):
    return impl.map_name(impl.make_mapper(**entries), name)


@pytest.mark.rule("MAP-1", "MAP-2", "MAP-3", "MAP-4", "MAP-11")
@given(data=st.data())
def test_maps_like_the_reference(impl, ref, data):
    mapper = data.draw(mappers(), label="mapper")
    name = data.draw(weight_names(), label="name")
    expected = ref.map_name(mapper_in(ref, mapper), name)
    assert_equal(f"map({mapper!r}, {name!r})", impl.map_name(mapper_in(impl, mapper), name), expected, "MAP-1")


@pytest.mark.rule("MAP-1")
def test_stage_order_is_fixed(impl):
    left, right = impl.make_mapper(suffix={".b": ".c"}), impl.make_mapper(regex={r"\.a$": ".b"})
    assert_equal("map('x.a') with suffix | regex", impl.map_name(impl.compose_mappers(left, right), "x.a"),
                 ("x.c", None), "MAP-1")


@pytest.mark.rule("MAP-2")
def test_every_matching_entry_applies_in_order(impl):
    assert_equal("map('a') with substr a->b, b->c", mapped(impl, "a", substr={"a": "b", "b": "c"}), ("c", None),
                 "MAP-2")


@pytest.mark.rule("MAP-3")
@pytest.mark.parametrize("stage, entries, expected", [
    ("regex", {"x": "y"}, "y.y.y"), ("substr", {"x": "y"}, "y.x.x"), ("prefix", {"x.": "y."}, "y.x.x"),
    ("suffix", {".x": ".y"}, "x.x.y")])
def test_occurrences_replaced(impl, stage, entries, expected):
    assert_equal(f"{stage} {entries} on 'x.x.x'", mapped(impl, "x.x.x", **{stage: entries}), (expected, None),
                 "MAP-3")


@pytest.mark.rule("MAP-4")
@pytest.mark.parametrize("stage, entries", [("regex", {"scale$": None}), ("substr", {"scale": None}),
                                            ("prefix", {"a.": None}), ("suffix", {".scale": None})])
def test_none_drops(impl, stage, entries):
    mapper = impl.make_mapper(**{stage: entries})
    assert_equal(f"map('a.scale') with {stage} {entries}", impl.map_name(mapper, "a.scale"), None, "MAP-4")
    assert_equal("apply([a.scale])", impl.apply_mapper(mapper, [("a.scale", torch.zeros(1))]), [], "MAP-4")


@pytest.mark.rule("MAP-5")
@given(data=st.data())
def test_right_operand_wins_and_operands_unchanged(impl, data):
    stage = data.draw(st.sampled_from(["substr", "prefix", "suffix"]), label="stage")
    left, right = impl.make_mapper(**{stage: {"a.": "left."}}), impl.make_mapper(**{stage: {"a.": "right."}})
    name = "a.a." if stage != "suffix" else "x.a."
    expected_left = impl.map_name(left, name)
    both = impl.compose_mappers(left, right)
    assert_equal(f"({stage} a->left | a->right)({name!r})", impl.map_name(both, name),
                 impl.map_name(right, name), "MAP-5")
    assert_equal("left operand after |", impl.map_name(left, name), expected_left, "MAP-5")


@pytest.mark.rule("MAP-6")
@given(name=weight_names())
def test_empty_mapper_is_identity(impl, name):
    assert_equal(f"empty mapper({name!r})", impl.map_name(impl.make_mapper(), name), (name, None), "MAP-6")


@pytest.mark.rule("MAP-7")
@given(data=st.data())
def test_composition_is_associative(impl, data):
    a, b, c = (mapper_in(impl, data.draw(mappers(), label=label)) for label in "abc")
    name = data.draw(weight_names(), label="name")
    left = impl.map_name(impl.compose_mappers(impl.compose_mappers(a, b), c), name)
    right = impl.map_name(impl.compose_mappers(a, impl.compose_mappers(b, c)), name)
    assert_equal(f"((a|b)|c)({name!r})", left, right, "MAP-7")


@pytest.mark.rule("MAP-8")
@given(data=st.data())
def test_cache_scale_mapper_is_idempotent(impl, data):
    method = data.draw(st.sampled_from(QUANT_METHODS), label="quant_method")
    name = data.draw(weight_names() | st.sampled_from(CANONICAL), label="name")
    mapper = impl.cache_scale_mapper(method)
    once = impl.map_name(mapper, name)
    if once is None:
        fail(f"{method} cache-scale mapper({name!r})", None, "a name", "MAP-8")
    assert_equal(f"{method} cache-scale mapper applied twice to {name!r}", impl.map_name(mapper, once[0]), once,
                 "MAP-8")
    if name in CANONICAL:
        assert_equal(f"{method} cache-scale mapper({name!r})", once[0], name, "MAP-8")


CANONICAL = [f"model.layers.0.self_attn.attn.{k}_scale" for k in ("q", "k", "v", "prob")]


@pytest.mark.rule("MAP-9")
@pytest.mark.parametrize("entries", [{"suffix": {"": "x"}}, {"prefix": {"": "x"}}, {"substr": {"": "x"}}], ids=str)
def test_invalid_entries_rejected_when_built(impl, entries):
    try:
        impl.make_mapper(**entries)
    except Exception:  # noqa: BLE001 - any rejection at construction passes
        return
    fail(f"building a mapper with {entries}", "accepted", "rejected at construction", "MAP-9")


@pytest.mark.rule("MAP-10")
@given(data=st.data())
def test_mapping_never_mutates_tensors(impl, data):
    mapper = mapper_in(impl, data.draw(mappers(), label="mapper"))
    name = data.draw(weight_names(), label="name")
    tensor = torch.arange(3.0)
    attributes = dict(tensor.__dict__)
    impl.apply_mapper(mapper, [(name, tensor)])
    assert_equal(f"tensor attributes after mapping {name!r}", dict(tensor.__dict__), attributes, "MAP-10")


@pytest.mark.rule("MAP-11")
def test_stacked_entry_yields_shard_id(impl):
    assert_equal("map('l.k_proj.weight')", mapped(impl, "l.k_proj.weight", stacked={".k_proj.": (".qkv_proj.", "k")}),
                 ("l.qkv_proj.weight", "k"), "MAP-11")
