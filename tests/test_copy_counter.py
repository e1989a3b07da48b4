"""COUNT, reference internals: the copy counter on a CUDA destination, and a reload session's per-layer counts.

The suite checks counting through the adapter on CPU tensors (COUNT-1, -2, -5) and what the
counts decide (COUNT-3, -4, -6: ``conformance/test_count.py``). It cannot see a host-to-device
``copy_`` or the numbers a reload session keeps per layer; these tests do.
"""

from __future__ import annotations

import pytest
import torch

from loadspec.reference import api
from loadspec.reference.copy_counter import CopyCounter
from loadspec.reference.spec import DEFAULT_SPEC
from loadspec.strategies.synthetic import synthetic_checkpoint


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("shape", [(), (1,), (3, 4)], ids=str)
def test_copy_counter_counts_a_host_to_cuda_copy(shape):
    destination = torch.zeros(shape, device="cuda")
    with CopyCounter() as counter:
        destination.copy_(torch.ones(shape))
    assert counter.copied == destination.numel()


def test_session_layer_counts_a_shard_delivered_twice_once():
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


@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_reload_report_counts_equal_each_layers_total(attention):
    spec = DEFAULT_SPEC.with_(attention=attention, tie_embeddings=True)
    model = api.build(spec)
    api.first_load(model, synthetic_checkpoint(spec).items())
    checkpoint = synthetic_checkpoint(spec, seed=5, kv_scales={"k": 0.5, "v": 0.5, "q": 1.0, "prob": 1.0},
                                      producer="canonical")
    report = api.reload(model, checkpoint.items())
    for layer, (counted, total) in report.counts.items():
        assert counted == total, f"{layer} counted={counted}, but should be {total} [COUNT-4]"
