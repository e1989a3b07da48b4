"""RELOAD, reference internals: tensor objects, the reload report, error classes, and the oracle's own values.

``conformance/test_reload.py``, ``test_order.py`` and ``test_stateful.py`` check ORDER and RELOAD
through the adapter on drawn models. What stays here is what they cannot see: that a reload keeps
the Python tensor objects (the suite sees ``data_ptr``), the ``ReloadReport`` (processed and
untouched layers), ``PartialLayerError`` and ``LoadspecError`` with their messages, and the
oracle's values after a scale-only reload (the suite compares those with the reference itself).
"""

from __future__ import annotations

import pytest
import torch

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.conformance.assertions import assert_unchanged
from loadspec.reference import api
from loadspec.reference.errors import LoadspecError, PartialLayerError
from loadspec.reference.kv_cache import output_scales
from loadspec.reference.lifecycle import is_attention
from loadspec.reference.spec import DEFAULT_SPEC, LayerSpec
from loadspec.strategies.synthetic import synthetic_checkpoint

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
    model = api.build(spec, device=device)
    api.first_load(model, synthetic_checkpoint(spec, seed=seed, **kw).items())
    return model


def attention_layers(model):
    return [m for m in model.modules() if is_attention(m)]


@pytest.mark.parametrize("spec", SPEC_PARAMS)
def test_reload_keeps_every_tensor_object_not_only_its_data_ptr(spec, device):
    model = loaded(spec, device=device)
    tensors = ReferenceAdapter().kernel_tensors
    before = {name: (id(t), t.data_ptr()) for name, t in tensors(model).items()}
    new = synthetic_checkpoint(spec, seed=9, producer="quark", kv_scales={"k": 2.0, "v": 4.0, "q": 0.5, "prob": 0.25})
    api.reload(model, new.items())
    after = {name: (id(t), t.data_ptr()) for name, t in tensors(model).items()}
    assert after == before, "tensor objects or storage changed [RELOAD-1]"


def test_oracle_scale_only_reload_values():
    model = loaded(DEFAULT_SPEC, kv_scales={"k": 0.5, "v": 0.25, "q": 0.125, "prob": 0.0625}, producer="canonical")
    api.reload(model, [("model.layers.0.self_attn.k_scale", torch.tensor(2.0))])
    first, second = (output_scales(a) for a in attention_layers(model))
    assert first == {"q_scale": 1.0, "k_scale": 2.0, "v_scale": 2.0, "prob_scale": 1.0}
    assert second == {"q_scale": 0.125, "k_scale": 0.5, "v_scale": 0.25, "prob_scale": 0.0625}  # [RELOAD-4]


def test_reload_report_lists_processed_and_untouched_layers(model_state):
    model = loaded(DEFAULT_SPEC)
    attention = attention_layers(model)
    before = model_state(model)
    weights = {k: v for k, v in synthetic_checkpoint(DEFAULT_SPEC).items() if "layers.0.mlp" in k}
    report = api.reload(model, weights.items())
    assert report.processed == ["model.layers.0.mlp.gate_up_proj", "model.layers.0.mlp.down_proj"] + [
        n for n, m in model.named_modules() if is_attention(m)]
    assert "model.layers.1.mlp.down_proj" in report.untouched
    # same values: the first load's checkpoint was reloaded
    assert_unchanged("model after reloading layer 0's MLP", before, model_state(model), "RELOAD-5")
    assert [a._k_scale_float for a in attention] == [0.5, 0.5]


def test_partial_layer_error_lists_the_missing_weights_and_complete_layers_still_reload(model_state):
    model = loaded(DEFAULT_SPEC)
    before = model_state(model)
    new = synthetic_checkpoint(DEFAULT_SPEC, seed=4)
    partial = [(k, v) for k, v in new.items() if "layers.1.self_attn.v_proj" not in k]
    with pytest.raises(PartialLayerError) as info:
        api.reload(model, partial, transactional=False)  # streaming: complete layers still reload
    message = str(info.value)
    assert "model.layers.1.self_attn.qkv_proj.weight" in message and "weight_scale" in message
    after = model_state(model)
    partial_layer = [k for k in before if "layers.1.self_attn.qkv_proj" in k]
    assert partial_layer and all(torch.equal(before[k][3], after[k][3]) for k in partial_layer)
    changed = [k for k in before if "layers.0.mlp.down_proj" in k and isinstance(before[k], tuple)]
    assert any(not torch.equal(before[k][3], after[k][3]) for k in changed), "complete layers are still reloaded"


def test_delivery_after_processing_raises_loadspec_error_saying_already_processed():
    model = loaded(DEFAULT_SPEC)
    new = synthetic_checkpoint(DEFAULT_SPEC, seed=6)
    session = api.reload_session(model)
    name = "model.layers.0.mlp.down_proj.weight"
    session.load([(name, new[name]), ("model.layers.0.mlp.down_proj.weight_scale", new[
        "model.layers.0.mlp.down_proj.weight_scale"])])
    assert "model.layers.0.mlp.down_proj" in session.report.processed
    with pytest.raises(LoadspecError, match="already processed"):
        session.load([(name, new[name])])
    session.abort()
