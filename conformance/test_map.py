"""MAP: weight-name mapping and mapper composition, checked against the reference mapper."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from loadspec.conformance.assertions import assert_equal, assert_raises_value_error, fail
from loadspec.conformance.drivers import mapper_entries, mapper_in
from loadspec.reference.vocabulary import CONTAINERS, QUANT_METHODS, SCALE_KINDS
from loadspec.strategies.mappers import STAGES, mappers, name_vocabularies, weight_names
from loadspec.strategies.producers import PRODUCERS

pytestmark = pytest.mark.requires("primitives")


def mapped(impl, name, **entries):
    return impl.map_name(impl.make_mapper(**entries), name)


def entry_rule(got, expected) -> str:
    """The rule a difference in mapping one name with one entry breaks: dropping, the shard id, or the rewrite."""
    if (got is None) != (expected is None):
        return "MAP-4"
    return "MAP-11" if got[0] == expected[0] else "MAP-3"


def diverging_rule(impl, ref, entries: dict, name: str) -> str:
    """Which MAP rule explains that ``impl`` maps ``name`` with ``entries`` differently from ``ref``.

    Walks the stages in the contract's order on the reference, feeding each stage the reference's name so far:
    one entry alone mapped differently is that entry's rule (MAP-3, MAP-4 or MAP-11), a stage's entries together
    MAP-2; when every stage alone agrees, the order of the stages is what differs (MAP-1).
    """
    for stage in STAGES:
        for key, value in entries[stage].items():
            single = {stage: {key: value}}
            got, expected = mapped(impl, name, **single), mapped(ref, name, **single)
            if got != expected:
                return entry_rule(got, expected)
        stage_only = {stage: entries[stage]}
        expected = mapped(ref, name, **stage_only)
        if mapped(impl, name, **stage_only) != expected:
            return "MAP-2"
        if expected is None:
            break
        name = expected[0]
    return "MAP-1"


@pytest.mark.rule("MAP-1", "MAP-2", "MAP-3", "MAP-4", "MAP-11")
@given(data=st.data())
def test_maps_like_the_reference(impl, ref, data):
    mapper = data.draw(mappers(), label="mapper")
    name = data.draw(weight_names(), label="name")
    expected = ref.map_name(mapper_in(ref, mapper), name)
    got = impl.map_name(mapper_in(impl, mapper), name)
    if got != expected:
        fail(f"map({mapper!r}, {name!r})", got, expected, diverging_rule(impl, ref, mapper_entries(mapper), name))


@pytest.mark.rule("MAP-1")
def test_stage_order_is_fixed(impl):
    left, right = impl.make_mapper(suffix={".b": ".c"}), impl.make_mapper(regex={r"\.a$": ".b"})
    assert_equal("map('x.a') with suffix | regex", impl.map_name(impl.compose_mappers(left, right), "x.a"),
                 ("x.c", None), "MAP-1")


# One entry per stage rewriting the last component of ``x.<old>`` to ``<new>``.
REWRITE = {
    "regex": lambda old, new: {rf"\.{old}$": f".{new}"},
    "substr": lambda old, new: {f".{old}": f".{new}"},
    "stacked": lambda old, new: {f".{old}": (f".{new}", 0)},
    "prefix": lambda old, new: {f"x.{old}": f"x.{new}"},
    "suffix": lambda old, new: {f".{old}": f".{new}"},
}


@pytest.mark.rule("MAP-1")
def test_every_pair_of_stages_runs_in_the_fixed_order_however_composed(impl, ref):
    for i, earlier in enumerate(STAGES):
        for later in STAGES[i + 1:]:
            first, second = {earlier: REWRITE[earlier]("a", "b")}, {later: REWRITE[later]("b", "c")}
            expected = mapped(ref, "x.a", **first, **second)
            ways = {f"one mapper {first | second}": impl.make_mapper(**first, **second),
                    f"{second} | {first}": impl.compose_mappers(impl.make_mapper(**second), impl.make_mapper(**first)),
                    f"{first} | {second}": impl.compose_mappers(impl.make_mapper(**first), impl.make_mapper(**second))}
            for how, mapper in ways.items():
                assert_equal(f"map('x.a') with {how}", impl.map_name(mapper, "x.a"), expected, "MAP-1")


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


def supported_stages(impl) -> tuple[str, ...]:
    """The stages ``impl.make_mapper`` takes (an engine without one raises ``NotImplementedError`` for it): the
    composition laws are checked on those, MAP-1 says which an engine must have."""
    sample = {"regex": {"x$": "y"}, "substr": {"x": "y"}, "stacked": {"x": ("y", 0)}, "prefix": {"x": "y"},
              "suffix": {"x": "y"}}
    supported = []
    for stage in STAGES:
        try:
            impl.make_mapper(**{stage: sample[stage]})
        except NotImplementedError:
            continue
        supported.append(stage)
    return tuple(supported)


@pytest.mark.rule("MAP-5")
@given(data=st.data())
def test_composition_merges_shared_keys_in_every_stage_right_winning(impl, ref, data):
    vocabulary = data.draw(name_vocabularies(), label="vocabulary")
    stages = supported_stages(impl)
    a, b = (data.draw(mappers(components=vocabulary, stages=stages), label=label) for label in "ab")
    name = data.draw(weight_names(components=vocabulary), label="name")
    left, right = mapper_in(impl, a), mapper_in(impl, b)
    before = (impl.map_name(left, name), impl.map_name(right, name))
    merged = mapper_in(impl, ref.compose_mappers(a, b))  # the entries of a | b, built directly
    assert_equal(f"({a!r} | {b!r})({name!r})", impl.map_name(impl.compose_mappers(left, right), name),
                 impl.map_name(merged, name), "MAP-5")
    assert_equal(f"operands mapping {name!r} after |", (impl.map_name(left, name), impl.map_name(right, name)),
                 before, "MAP-5")


# Every producer's KV-cache scale names, in both containers: names a default or cache-scale mapping would rename.
PRODUCER_NAMES = sorted({name for producer in PRODUCERS.values() for container in CONTAINERS for kind in SCALE_KINDS
                         if (name := producer.scale_name(f"model.layers.0.{container}.", kind))})


@pytest.mark.rule("MAP-6")
@given(name=weight_names() | st.sampled_from(PRODUCER_NAMES))
def test_empty_mapper_is_identity(impl, name):
    assert_equal(f"empty mapper({name!r})", impl.map_name(impl.make_mapper(), name), (name, None), "MAP-6")


@pytest.mark.rule("MAP-7")
@given(data=st.data())
def test_composition_is_associative(impl, data):
    vocabulary = data.draw(name_vocabularies(), label="vocabulary")
    supported = supported_stages(impl)
    # one stage alone: an operand only that stage fills
    stages = st.sampled_from([(stage,) for stage in supported] + [supported])

    def operand(label: str):
        stage_set = data.draw(stages, label=f"{label} stages")
        return data.draw(mappers(components=vocabulary, stages=stage_set).filter(bool), label=label)

    drawn = [operand(label) for label in "abc"]
    name = data.draw(names_matching(vocabulary, drawn), label="name")
    built_operands = {id(mapper): mapper_in(impl, mapper) for mapper in drawn}
    for turn in range(3):  # each operand once in the middle, between the other two
        x, y, z = drawn[turn:] + drawn[:turn]
        a, b, c = (built_operands[id(mapper)] for mapper in (x, y, z))
        left = impl.map_name(impl.compose_mappers(impl.compose_mappers(a, b), c), name)
        right = impl.map_name(impl.compose_mappers(a, impl.compose_mappers(b, c)), name)
        assert_equal(f"(({x!r} | {y!r}) | {z!r})({name!r})", left, right, "MAP-7")


def names_matching(vocabulary: tuple[str, ...], drawn: list) -> st.SearchStrategy[str]:
    """Names over ``vocabulary`` that often contain a key of the ``drawn`` mappers (literal stages' keys as parts)."""
    keys = sorted({key.strip(".") for mapper in drawn for stage in ("substr", "stacked", "prefix", "suffix")
                   for key in getattr(mapper, stage)} - {""})
    parts = st.sampled_from(vocabulary) | st.sampled_from(keys) if keys else st.sampled_from(vocabulary)
    return st.lists(parts, min_size=1, max_size=5).map(".".join)


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
@pytest.mark.parametrize("entries", [{"suffix": {"": "x"}}, {"prefix": {"": "x"}}, {"substr": {"": "x"}},
                                     {"regex": {"(": "x"}}, {"regex": {r"\.k_scale[": "x"}}], ids=str)
def test_invalid_entries_rejected_when_built(impl, entries):
    assert_raises_value_error(f"building a mapper with {entries}", lambda: impl.make_mapper(**entries), "MAP-9")


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
@pytest.mark.parametrize("name, stacked, expected", [
    ("l.k_proj.weight", {".k_proj.": (".qkv_proj.", "k")}, ("l.qkv_proj.weight", "k")),
    ("l.gate_proj.weight", {".gate_proj.": (".gate_up_proj.", 0)}, ("l.gate_up_proj.weight", 0)),
    ("l.q_proj.weight", {".q_proj.": (".qkv_proj.", "q"), ".qkv_proj.": (".fused.", 1)}, ("l.fused.weight", 1)),
], ids=["k", "shard-0", "last-match-wins"])
def test_stacked_entry_yields_shard_id(impl, name, stacked, expected):
    assert_equal(f"map({name!r}) with stacked {stacked}", mapped(impl, name, stacked=stacked), expected, "MAP-11")
