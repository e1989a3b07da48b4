"""COUNT: copy counting."""

from __future__ import annotations

import pytest
import torch

from loadspec.reference import api
from loadspec.reference.copy_counter import CopyCounter
from loadspec.reference.spec import DEFAULT_SPEC
from loadspec.strategies.synthetic import synthetic_checkpoint


@pytest.mark.rule("COUNT-1")
@pytest.mark.parametrize("shape", [(), (1,), (3, 4)], ids=str)
def test_copy_counts_every_element(shape, device):
    destination = torch.zeros(shape, device=device)
    with CopyCounter() as counter:
        destination.copy_(torch.ones(shape))
    assert counter.copied == destination.numel()


@pytest.mark.rule("COUNT-2")
def test_other_writes_are_not_counted():
    destination = torch.zeros(4)
    with CopyCounter() as counter:
        destination.fill_(1.0)
        destination.zero_()
        destination.index_copy_(0, torch.tensor([0, 1]), torch.ones(2))
    assert counter.copied == 0


@pytest.mark.rule("COUNT-3")
def test_a_region_written_twice_counts_once():
    model = api.build(DEFAULT_SPEC)
    api.first_load(model, synthetic_checkpoint(DEFAULT_SPEC).items())
    checkpoint = synthetic_checkpoint(DEFAULT_SPEC, seed=3)
    name = "model.layers.0.self_attn.q_proj.weight"
    session = api.reload_session(model)
    session.load([(name, checkpoint[name])])
    session.load([(name, checkpoint[name])])
    layer = session.layers["model.layers.0.self_attn.qkv_proj"]
    assert layer.counted("weight") == DEFAULT_SPEC.q_size * DEFAULT_SPEC.hidden_size
    assert not layer.processed
    session.abort()


@pytest.mark.rule("COUNT-4")
@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_full_load_counts_each_layers_elements(attention):
    spec = DEFAULT_SPEC.with_(attention=attention, tie_embeddings=True)
    model = api.build(spec)
    api.first_load(model, synthetic_checkpoint(spec).items())
    checkpoint = synthetic_checkpoint(spec, seed=5, kv_scales={"k": 0.5, "v": 0.5, "q": 1.0, "prob": 1.0},
                                      producer="canonical")
    report = api.reload(model, checkpoint.items())
    for layer, (counted, total) in report.counts.items():
        assert counted == total, f"{layer} counted={counted}, but should be {total} [COUNT-4]"


@pytest.mark.rule("COUNT-5")
def test_broadcasting_copy_counts_the_destination():
    destination = torch.zeros(3, 4)
    with CopyCounter() as counter:
        destination.copy_(torch.ones(4))
    assert counter.copied == 12
