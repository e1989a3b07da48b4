"""ORDER and RELOAD: processing order and the layerwise reload lifecycle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from model_state import assert_same_kernel_state, assert_unchanged, snapshot

from loadspec.reference import api
from loadspec.reference.auto_loader import AutoWeightsLoader
from loadspec.reference.errors import LoadspecError, PartialLayerError
from loadspec.reference.kv_cache import output_scales
from loadspec.reference.lifecycle import is_attention
from loadspec.reference.spec import DEFAULT_SPEC, LayerSpec

SPECS = {
    "mha": DEFAULT_SPEC,
    "mha-attention-first-tied": DEFAULT_SPEC.with_(
        tie_embeddings=True, layers=tuple(LayerSpec(attention_first=True, qkv_quant="fp8_per_channel",
                                                    o_quant="fp8_per_tensor") for _ in range(2))),
    "mla": DEFAULT_SPEC.with_(attention="mla"),
    "gqa-bf16-wrapped": DEFAULT_SPEC.with_(num_kv_heads=1, params_dtype="bfloat16", wrapper=("language_model",)),
}
SPEC_PARAMS = [pytest.param(spec, id=name) for name, spec in SPECS.items()]


def loaded(spec, *, seed=0, device="cpu", **kw):
    from loadspec.strategies.synthetic import synthetic_checkpoint
    model = api.build(spec, device=device)
    api.first_load(model, synthetic_checkpoint(spec, seed=seed, **kw).items())
    return model


def checkpoint(spec, **kw):
    from loadspec.strategies.synthetic import synthetic_checkpoint
    return synthetic_checkpoint(spec, **kw)


def attention_layers(model):
    return [m for m in model.modules() if is_attention(m)]


@pytest.mark.rule("ORDER-1", "ORDER-2", "ORDER-3")
@pytest.mark.parametrize("spec", SPEC_PARAMS)
def test_attention_processed_last_and_each_layer_once(spec):
    model = loaded(spec)
    modules = dict(model.named_modules())
    first_order = model.loadspec_order
    report = api.reload(model, checkpoint(spec, seed=1).items())
    for order in (first_order, report.processed):
        kinds = [is_attention(modules[name]) for name in order]
        assert kinds == sorted(kinds), f"processing order={order}, but attention should come last [ORDER-1]"
        assert len(order) == len(set(order)), f"a layer was processed twice: {order} [ORDER-2]"
    assert sum(map(is_attention, (modules[n] for n in report.processed))) == len(spec.layers)


@pytest.mark.rule("ORDER-4", "RELOAD-10")
@pytest.mark.parametrize("spec", SPEC_PARAMS)
def test_layer_processed_when_its_last_element_arrives(spec):
    model = loaded(spec)
    weights = list(checkpoint(spec, seed=2).items())
    mapper = AutoWeightsLoader(model).effective_mapper(model.mapper)
    remaining: dict[str, int] = {}
    for name, _ in weights:
        layer = mapper.map_name(name).rsplit(".", 1)[0]
        remaining[layer] = remaining.get(layer, 0) + 1
    session = api.reload_session(model)
    modules = dict(model.named_modules())
    for name, tensor in weights:
        layer = mapper.map_name(name).rsplit(".", 1)[0]
        owner = "model.embed_tokens" if spec.tie_embeddings and layer.endswith("lm_head") else layer
        session.load([(name, tensor)])
        remaining[layer] -= 1
        done = owner in session.report.processed
        expect = remaining[layer] == 0 and not is_attention(modules[owner])
        assert done == expect, f"{owner} processed={done} after {name}, but should be {expect} [ORDER-4]"
    session.finish()


@pytest.mark.rule("RELOAD-1", "RELOAD-2")
@pytest.mark.parametrize("spec", SPEC_PARAMS)
def test_reload_keeps_storage_and_equals_fresh_load(spec, device):
    model = loaded(spec, device=device)
    before = snapshot(model)
    new = checkpoint(spec, seed=9, producer="quark", kv_scales={"k": 2.0, "v": 4.0, "q": 0.5, "prob": 0.25})
    api.reload(model, new.items())
    after = snapshot(model)
    identities = {k: v[:2] for k, v in before.items() if isinstance(v, tuple)}
    assert identities == {k: v[:2] for k, v in after.items() if isinstance(v, tuple)}, "storage changed [RELOAD-1]"
    fresh = api.build(spec, device=device)
    api.first_load(fresh, new.items())
    assert_same_kernel_state(api.export(model), api.export(fresh))


@pytest.mark.rule("RELOAD-3")
def test_partial_scale_reload_takes_fresh_defaults():
    model = loaded(DEFAULT_SPEC, kv_scales={"k": 0.5, "v": 0.25, "q": 0.125, "prob": 0.0625}, producer="canonical")
    api.reload(model, [("model.layers.0.self_attn.k_scale", torch.tensor(2.0))])
    first, second = (output_scales(a) for a in attention_layers(model))
    assert first == {"q_scale": 1.0, "k_scale": 2.0, "v_scale": 2.0, "prob_scale": 1.0}
    assert second == {"q_scale": 0.125, "k_scale": 0.5, "v_scale": 0.25, "prob_scale": 0.0625}  # [RELOAD-4]


@pytest.mark.rule("RELOAD-4", "RELOAD-5", "KVPROC-11")
def test_layers_receiving_nothing_keep_everything():
    model = loaded(DEFAULT_SPEC)
    attention = attention_layers(model)
    before = snapshot(model)
    weights = {k: v for k, v in checkpoint(DEFAULT_SPEC).items() if "layers.0.mlp" in k}
    report = api.reload(model, weights.items())
    assert report.processed == ["model.layers.0.mlp.gate_up_proj", "model.layers.0.mlp.down_proj"] + [
        n for n, m in model.named_modules() if is_attention(m)]
    assert "model.layers.1.mlp.down_proj" in report.untouched
    assert_unchanged(before, snapshot(model))  # same values: the same checkpoint was reloaded
    assert [a._k_scale_float for a in attention] == [0.5, 0.5]


@pytest.mark.rule("RELOAD-6", "LOAD-6")
def test_partial_layer_rejected_listing_missing_and_kept():
    model = loaded(DEFAULT_SPEC)
    before = snapshot(model)
    new = checkpoint(DEFAULT_SPEC, seed=4)
    partial = [(k, v) for k, v in new.items() if "layers.1.self_attn.v_proj" not in k]
    with pytest.raises(PartialLayerError) as info:
        api.reload(model, partial)
    message = str(info.value)
    assert "model.layers.1.self_attn.qkv_proj.weight" in message and "weight_scale" in message
    after = snapshot(model)
    partial_layer = [k for k in before if "layers.1.self_attn.qkv_proj" in k]
    assert partial_layer and all(torch.equal(before[k][4], after[k][4]) for k in partial_layer)
    changed = [k for k in before if "layers.0.mlp.down_proj" in k and isinstance(before[k], tuple)]
    assert any(not torch.equal(before[k][4], after[k][4]) for k in changed), "complete layers are still reloaded"


@pytest.mark.rule("RELOAD-7")
@pytest.mark.parametrize("spec", SPEC_PARAMS)
def test_reloading_twice_is_bit_identical(spec):
    model = loaded(spec)
    new = checkpoint(spec, seed=11)
    api.reload(model, new.items())
    once = api.export(model)
    api.reload(model, new.items())
    assert_same_kernel_state(api.export(model), once)


@pytest.mark.rule("RELOAD-8")
def test_tied_weights_stay_tied():
    spec = DEFAULT_SPEC.with_(tie_embeddings=True)
    model = loaded(spec)
    new = checkpoint(spec, seed=13)
    api.reload(model, new.items())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, new["model.embed_tokens.weight"])


@pytest.mark.rule("RELOAD-9")
def test_delivery_after_processing_rejected():
    model = loaded(DEFAULT_SPEC)
    new = checkpoint(DEFAULT_SPEC, seed=6)
    session = api.reload_session(model)
    name = "model.layers.0.mlp.down_proj.weight"
    session.load([(name, new[name]), ("model.layers.0.mlp.down_proj.weight_scale", new[
        "model.layers.0.mlp.down_proj.weight_scale"])])
    assert "model.layers.0.mlp.down_proj" in session.report.processed
    with pytest.raises(LoadspecError, match="already processed"):
        session.load([(name, new[name])])
    session.abort()


@pytest.mark.rule("RELOAD-10")
@given(data=st.data())
def test_order_and_grouping_do_not_matter(data):
    spec = DEFAULT_SPEC.with_(tie_embeddings=data.draw(st.booleans(), label="tie_embeddings"))
    new = list(checkpoint(spec, seed=21).items())
    shuffled = data.draw(st.permutations(new), label="delivery order")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(new)), max_size=6), label="bucket boundaries"))
    model = loaded(spec)
    session = api.reload_session(model)
    for start, stop in zip([0, *cuts], [*cuts, len(new)]):
        session.load(shuffled[start:stop])
    session.finish()
    fresh = api.build(spec)
    api.first_load(fresh, new)
    assert_same_kernel_state(api.export(model), api.export(fresh))
