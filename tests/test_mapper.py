"""MAP: weight-name mapping and mapper composition."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given

from loadspec.reference.cache_scale_mappers import CACHE_SCALE_MAPPER
from loadspec.reference.errors import MapperError
from loadspec.reference.mapper import EMPTY_MAPPER, WeightsMapper
from loadspec.strategies.mappers import mappers, weight_names


@pytest.mark.rule("MAP-1")
def test_stage_order_is_fixed_whatever_the_composition():
    suffix_first = WeightsMapper(suffix={".b": ".c"}) | WeightsMapper(regex={r"\.a$": ".b"})
    assert suffix_first.map_name("x.a") == "x.c"  # regex ran first, then suffix
    stacked = WeightsMapper(suffix={".qkv_proj.w": ".fused"}) | WeightsMapper(stacked={".q_proj.": (".qkv_proj.", "q")})
    assert stacked.map_name_with_shard("l.q_proj.w") == ("l.fused", "q")


@pytest.mark.rule("MAP-2")
def test_every_matching_entry_applies_in_order():
    mapper = WeightsMapper(substr={"a": "b", "b": "c"})
    assert mapper.map_name("a") == "c"
    assert WeightsMapper(substr={"b": "c", "a": "b"}).map_name("a") == "b"


@pytest.mark.rule("MAP-3")
def test_regex_all_substr_prefix_first_suffix_last():
    assert WeightsMapper(regex={"x": "y"}).map_name("x.x.x") == "y.y.y"
    assert WeightsMapper(substr={"x": "y"}).map_name("x.x.x") == "y.x.x"
    assert WeightsMapper(stacked={"x": ("y", 0)}).map_name("x.x.x") == "y.x.x"
    assert WeightsMapper(prefix={"x.": "y."}).map_name("x.x.x") == "y.x.x"
    assert WeightsMapper(suffix={".x": ".y"}).map_name("x.x.x") == "x.x.y"
    assert WeightsMapper(suffix={".x": ".y"}).map_name("x.x.z") == "x.x.z"


@pytest.mark.rule("MAP-4")
@pytest.mark.parametrize("mapper", [WeightsMapper(regex={r"scale$": None}), WeightsMapper(substr={"scale": None}),
                                    WeightsMapper(prefix={"a.": None}), WeightsMapper(suffix={".scale": None})],
                         ids=["regex", "substr", "prefix", "suffix"])
def test_none_drops(mapper):
    assert mapper.map_name("a.scale") is None
    assert list(mapper.apply([("a.scale", torch.zeros(1)), ("b.w", torch.zeros(1))])) != []
    assert [name for name, *_ in mapper.apply([("a.scale", torch.zeros(1))])] == []


@pytest.mark.rule("MAP-5")
@given(a=mappers(), b=mappers())
def test_right_operand_wins_and_operands_unchanged(a, b):
    before = (repr(a), repr(b))
    both = a | b
    for stage in ("regex", "substr", "stacked", "prefix", "suffix"):
        merged, right = getattr(both, stage), getattr(b, stage)
        for key, value in right.items():
            assert merged[key] == value, f"{stage}[{key!r}]={merged[key]!r}, but should be {value!r} [MAP-5]"
    assert (repr(a), repr(b)) == before


@pytest.mark.rule("MAP-6")
@given(name=weight_names())
def test_empty_mapper_is_identity(name):
    assert EMPTY_MAPPER.map_name_with_shard(name) == (name, None)


@pytest.mark.rule("MAP-7")
@given(a=mappers(), b=mappers(), c=mappers(), name=weight_names())
def test_composition_is_associative(a, b, c, name):
    assert ((a | b) | c).map_name_with_shard(name) == (a | (b | c)).map_name_with_shard(name)


@pytest.mark.rule("MAP-8")
@given(name=weight_names())
def test_cache_scale_mapper_is_idempotent(name):
    once = CACHE_SCALE_MAPPER.map_name(name)
    assert once is not None and CACHE_SCALE_MAPPER.map_name(once) == once


@pytest.mark.rule("MAP-9")
@pytest.mark.parametrize("kwargs", [{"suffix": {"": "x"}}, {"prefix": {"": "x"}}, {"substr": {"": "x"}},
                                    {"regex": {"(": "x"}}, {"stacked": {"": ("x", 0)}},
                                    {"stacked": {"a": "not-a-pair"}}], ids=str)
def test_invalid_entries_rejected_at_construction(kwargs):
    with pytest.raises(MapperError):
        WeightsMapper(**kwargs)


@pytest.mark.rule("MAP-10")
@given(mapper=mappers(), name=weight_names())
def test_mapping_never_mutates_tensors(mapper, name):
    tensor = torch.arange(3.0)
    before = dict(tensor.__dict__)
    for _, out, _ in mapper.apply([(name, tensor)]):
        assert out is tensor
    assert tensor.__dict__ == before and torch.equal(tensor, torch.arange(3.0))


@pytest.mark.rule("MAP-11")
def test_stacked_entry_yields_shard_id_last_match_wins():
    mapper = WeightsMapper(stacked={".q_proj.": (".qkv_proj.", "q"), ".qkv_proj.": (".fused.", "all")})
    assert mapper.map_name_with_shard("l.q_proj.weight") == ("l.fused.weight", "all")
    [(name, _, shard)] = list(WeightsMapper(stacked={".k_proj.": (".qkv_proj.", "k")}).apply(
        [("l.k_proj.weight", torch.zeros(1))]))
    assert (name, shard) == ("l.qkv_proj.weight", "k")


@pytest.mark.rule("MAP-9")
def test_regex_strings_are_compiled():
    mapper = WeightsMapper(regex={r"\.kv_scale$": ".attn.k_scale"})
    assert all(isinstance(p, re.Pattern) for p in mapper.regex)
