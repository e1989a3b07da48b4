"""NAMES, reference internals: the effective mapper, and the oracle's own values after a first load.

``conformance/test_names.py`` checks every producer's names through the adapter's mappers
against the canonical targets, and the values that reach the kernel against the reference's,
which on the reference is a comparison with itself. So the values each layout loads are pinned
here (``test_oracle_*``), with what the suite cannot see: ``AutoWeightsLoader.effective_mapper``.
"""

from __future__ import annotations

import pytest

from loadspec.reference import api
from loadspec.reference.auto_loader import AutoWeightsLoader
from loadspec.reference.kv_cache import output_scales
from loadspec.reference.mapper import WeightsMapper
from loadspec.reference.spec import DEFAULT_SPEC, uniform_layers
from loadspec.reference.vocabulary import QUANT_METHODS
from loadspec.strategies.producers import PRODUCERS
from loadspec.strategies.synthetic import synthetic_checkpoint

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


PRODUCER_PARAMS = [pytest.param(p.id, id=p.id) for p in PRODUCERS.values()]


@pytest.mark.parametrize("producer_id", PRODUCER_PARAMS)
def test_oracle_first_load_values_per_producer(producer_id):
    spec = DEFAULT_SPEC.with_(quant_method=PRODUCERS[producer_id].quant_method)
    for got in load_scales(spec, producer_id):
        assert got == expected_outputs(producer_id)


@pytest.mark.parametrize("quant_method", QUANT_METHODS)
def test_oracle_mla_values_under_every_config(quant_method):
    spec = DEFAULT_SPEC.with_(attention="mla", quant_method=quant_method)
    assert load_scales(spec, "compressed-tensors")[0] == expected_outputs("compressed-tensors")


def test_oracle_mixer_values():
    spec = DEFAULT_SPEC.with_(container="mixer", quant_method="modelopt")
    checkpoint = synthetic_checkpoint(spec, producer="modelopt", kv_scales=VALUES)
    assert "model.layers.0.mixer.k_proj.k_scale" in checkpoint
    assert load_scales(spec, "modelopt")[0] == expected_outputs("modelopt")


def test_effective_mapper_cache_scale_entry_wins_on_an_equal_key():
    model = api.build(DEFAULT_SPEC)
    clash = r"\.(self_attn|mixer)\.(q|k|v|prob)_scale$"
    model_mapper = WeightsMapper(regex={clash: r".\1.wrong.\2_scale"})
    merged = AutoWeightsLoader(model).effective_mapper(model_mapper)
    assert merged.map_name("m.self_attn.k_scale") == "m.self_attn.attn.k_scale"
    unquantized = api.build(DEFAULT_SPEC.with_(quant_method=None, layers=uniform_layers(1)))
    unmerged = AutoWeightsLoader(unquantized).effective_mapper(None)
    assert unmerged.map_name("m.self_attn.k_scale") == "m.self_attn.k_scale"


@pytest.mark.parametrize("wrapper", [(), ("language_model",), ("outer", "language_model")], ids=str)
@pytest.mark.parametrize("producer_id", ["compressed-tensors", "modelopt", "quark", "fused-qkv"])
def test_oracle_values_under_wrapper_prefixes(wrapper, producer_id):
    spec = DEFAULT_SPEC.with_(wrapper=wrapper, quant_method=PRODUCERS[producer_id].quant_method)
    assert load_scales(spec, producer_id)[0] == expected_outputs(producer_id)
