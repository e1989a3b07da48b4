"""MAP, reference internals: the ``WeightsMapper`` class, and values the suite only compares against it.

``conformance/test_map.py`` checks every MAP rule through the adapter. What stays here is what it
cannot see: the mapper's stage dicts and compiled patterns, ``MapperError``, that ``apply``
yields the caller's tensor objects, and pinned values of the oracle where the suite's check is
``impl == ref`` (``test_oracle_*``: on the reference that comparison is with itself).
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from loadspec.reference.errors import MapperError
from loadspec.reference.mapper import STAGES, WeightsMapper
from loadspec.strategies.mappers import mappers, name_vocabularies, weight_names


def test_oracle_stacked_stage_runs_before_suffix_keeping_the_shard_id():
    stacked = WeightsMapper(suffix={".qkv_proj.w": ".fused"}) | WeightsMapper(stacked={".q_proj.": (".qkv_proj.", "q")})
    assert stacked.map_name_with_shard("l.q_proj.w") == ("l.fused", "q")


def test_oracle_stacked_entry_replaces_the_first_occurrence_and_suffix_only_a_trailing_one():
    assert WeightsMapper(stacked={"x": ("y", 0)}).map_name("x.x.x") == "y.x.x"
    assert WeightsMapper(suffix={".x": ".y"}).map_name("x.x.z") == "x.x.z"


@given(a=mappers(), b=mappers())
def test_composed_mapper_stage_dicts_take_the_right_operands_entries(a, b):
    before = (repr(a), repr(b))
    both = a | b
    for stage in ("regex", "substr", "stacked", "prefix", "suffix"):
        merged, right = getattr(both, stage), getattr(b, stage)
        for key, value in right.items():
            assert merged[key] == value, f"{stage}[{key!r}]={merged[key]!r}, but should be {value!r} [MAP-5]"
    assert (repr(a), repr(b)) == before


@pytest.mark.parametrize("kwargs", [{"suffix": {"": "x"}}, {"prefix": {"": "x"}}, {"substr": {"": "x"}},
                                    {"regex": {"(": "x"}}, {"stacked": {"": ("x", 0)}},
                                    {"stacked": {"a": "not-a-pair"}}], ids=str)
def test_invalid_entries_raise_mapper_error(kwargs):
    with pytest.raises(MapperError):
        WeightsMapper(**kwargs)


def test_regex_strings_are_compiled():
    mapper = WeightsMapper(regex={r"\.kv_scale$": ".attn.k_scale"})
    assert all(isinstance(p, re.Pattern) for p in mapper.regex)


@given(mapper=mappers(), name=weight_names())
def test_apply_yields_the_callers_tensor_objects_with_their_values(mapper, name):
    tensor = torch.arange(3.0)
    for _, out, _ in mapper.apply([(name, tensor)]):
        assert out is tensor
    assert torch.equal(tensor, torch.arange(3.0))


def test_oracle_last_matching_stacked_entry_wins():
    mapper = WeightsMapper(stacked={".q_proj.": (".qkv_proj.", "q"), ".qkv_proj.": (".fused.", "all")})
    assert mapper.map_name_with_shard("l.q_proj.weight") == ("l.fused.weight", "all")


def test_apply_yields_the_shard_id_with_the_weight():
    [(name, _, shard)] = list(WeightsMapper(stacked={".k_proj.": (".qkv_proj.", "k")}).apply(
        [("l.k_proj.weight", torch.zeros(1))]))
    assert (name, shard) == ("l.qkv_proj.weight", "k")


@given(data=st.data())
def test_mappers_fill_only_the_chosen_stages_from_the_chosen_vocabulary(data):
    vocabulary = data.draw(name_vocabularies())
    stages = tuple(data.draw(st.sets(st.sampled_from(STAGES))))
    mapper = data.draw(mappers(stages=stages, components=vocabulary))
    for stage in STAGES:
        if stage not in stages:
            assert not getattr(mapper, stage), f"{stage} has entries {dict(getattr(mapper, stage))}"
    for key in [*mapper.substr, *mapper.stacked, *mapper.prefix, *mapper.suffix]:
        assert any(part and part in component for part in key.split(".") for component in vocabulary), key
    name = data.draw(weight_names(components=vocabulary))
    assert set(name.split(".")) <= set(vocabulary)
