"""NAMES: every producer's checkpoint layout reaches the canonical scale parameters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadspec.reference.vocabulary import QUANT_METHODS
from loadspec.reference import api
from loadspec.reference.auto_loader import AutoWeightsLoader
from loadspec.reference.cache_scale_mappers import CACHE_SCALE_MAPPER
from loadspec.reference.kv_cache import output_scales
from loadspec.reference.mapper import WeightsMapper
from loadspec.strategies.producers import PRODUCERS
from loadspec.reference.spec import DEFAULT_SPEC, uniform_layers
from loadspec.strategies.synthetic import synthetic_checkpoint
from loadspec.strategies.mappers import weight_names

VALUES = {"k": 0.5, "v": 0.25, "q": 0.125, "prob": 0.0625}


def expected_outputs(producer_id: str) -> dict[str, float]:
    named = PRODUCERS[producer_id].scale_names
    k, v = (0.5, 0.5) if PRODUCERS[producer_id].fused_kv else (VALUES["k"], VALUES["v"])
    return {"q_scale": VALUES["q"] if "q" in named else 1.0, "k_scale": k, "v_scale": v,
            "prob_scale": VALUES["prob"] if "prob" in named else 1.0}


def load_scales(spec, producer_id: str) -> list[dict[str, float]]:
    model = api.build(spec)
    api.first_load(model, synthetic_checkpoint(spec, producer=producer_id, kv_scales=VALUES).items())
    return [output_scales(dict(model.named_modules())[spec.attention_prefix(i)[:-1]])
            for i in range(len(spec.layers))]


PRODUCER_PARAMS = [pytest.param(p.id, marks=pytest.mark.rule(p.rule), id=p.id) for p in PRODUCERS.values()]


@pytest.mark.parametrize("producer_id", PRODUCER_PARAMS)
def test_producer_layout_reaches_canonical_scales(producer_id):
    spec = DEFAULT_SPEC.with_(quant_method=PRODUCERS[producer_id].quant_method)
    for got in load_scales(spec, producer_id):
        assert got == expected_outputs(producer_id)


@pytest.mark.rule("NAMES-2")
@pytest.mark.parametrize("quant_method", QUANT_METHODS)
def test_legacy_output_scale_names_under_every_config(quant_method):
    spec = DEFAULT_SPEC.with_(quant_method=quant_method)
    assert load_scales(spec, "compressed-tensors-legacy")[0] == expected_outputs("compressed-tensors-legacy")


@pytest.mark.rule("NAMES-8")
@pytest.mark.parametrize("quant_method", QUANT_METHODS)
def test_mla_scales_load_under_every_config(quant_method):
    spec = DEFAULT_SPEC.with_(attention="mla", quant_method=quant_method)
    assert load_scales(spec, "compressed-tensors")[0] == expected_outputs("compressed-tensors")


@pytest.mark.rule("NAMES-9")
def test_nemotron_mixer_names():
    spec = DEFAULT_SPEC.with_(container="mixer", quant_method="modelopt")
    checkpoint = synthetic_checkpoint(spec, producer="modelopt", kv_scales=VALUES)
    assert "model.layers.0.mixer.k_proj.k_scale" in checkpoint
    assert load_scales(spec, "modelopt")[0] == expected_outputs("modelopt")


@pytest.mark.rule("NAMES-7")
def test_fused_names_survive_the_models_stacked_mapper():
    spec = DEFAULT_SPEC
    mapper = AutoWeightsLoader(api.build(spec)).effective_mapper(api.build(spec).mapper)
    assert mapper.map_name_with_shard("model.layers.0.self_attn.k_proj.k_scale") == (
        "model.layers.0.self_attn.attn.k_scale", None)
    assert mapper.map_name_with_shard("model.layers.0.self_attn.k_proj.output_scale") == (
        "model.layers.0.self_attn.attn.k_scale", None)
    assert mapper.map_name_with_shard("model.layers.0.self_attn.k_proj.weight") == (
        "model.layers.0.self_attn.qkv_proj.weight", "k")


@pytest.mark.rule("NAMES-10")
def test_cache_scale_mapper_merged_to_the_right():
    model = api.build(DEFAULT_SPEC)
    clash = r"\.(self_attn|mixer)\.(q|k|v|prob)_scale$"
    model_mapper = WeightsMapper(regex={clash: r".\1.wrong.\2_scale"})
    merged = AutoWeightsLoader(model).effective_mapper(model_mapper)
    assert merged.map_name("m.self_attn.k_scale") == "m.self_attn.attn.k_scale"
    unquantized = api.build(DEFAULT_SPEC.with_(quant_method=None, layers=uniform_layers(1)))
    assert AutoWeightsLoader(unquantized).effective_mapper(None).map_name("m.self_attn.k_scale") == "m.self_attn.k_scale"


@pytest.mark.rule("NAMES-11")
def test_bare_prob_scale():
    assert CACHE_SCALE_MAPPER.map_name("model.layers.0.self_attn.prob_scale") == "model.layers.0.self_attn.attn.prob_scale"


NON_SCALE_SUFFIXES = ["weight", "weight_scale", "input_scale", "bias"]


@pytest.mark.rule("NAMES-12")
@given(name=weight_names(), suffix=st.sampled_from(NON_SCALE_SUFFIXES))
def test_non_scale_names_pass_unchanged(name, suffix):
    full = f"{name}.{suffix}"
    assert CACHE_SCALE_MAPPER.map_name(full) == full


@pytest.mark.rule("NAMES-13")
@pytest.mark.parametrize("wrapper", [(), ("language_model",), ("outer", "language_model")], ids=str)
@pytest.mark.parametrize("producer_id", ["compressed-tensors", "modelopt", "quark", "fused-qkv"])
def test_prefixes_do_not_matter(wrapper, producer_id):
    spec = DEFAULT_SPEC.with_(wrapper=wrapper, quant_method=PRODUCERS[producer_id].quant_method)
    assert load_scales(spec, producer_id)[0] == expected_outputs(producer_id)
