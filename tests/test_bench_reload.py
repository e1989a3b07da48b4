"""Benchmark: the reference's layerwise reload against a plain ``copy_`` loop over the same tensors.

The module is the one the vLLM figure was taken on (FP8-KV attention with bf16
linears): vLLM's reload costs 2.6-3.7x such a loop on CPU. Run with
``make bench``; compare the two rows of the ``reload-vs-copy`` group.
"""

from __future__ import annotations

import pytest
import torch

from loadspec.reference import api
from loadspec.reference.spec import LayerSpec, ModelSpec
from loadspec.strategies.synthetic import synthetic_checkpoint

SPEC = ModelSpec(layers=tuple(LayerSpec() for _ in range(4)), vocab_size=512, hidden_size=256, num_heads=8,
                 num_kv_heads=2, head_dim=32, intermediate_size=512, params_dtype="bfloat16",
                 kv_cache_dtype="fp8_e4m3", quant_method="fp8")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two threads make both sides 10-100x noisier."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def loaded():
    model = api.build(SPEC)
    weights = list(synthetic_checkpoint(SPEC, producer="compressed-tensors").items())
    api.first_load(model, weights)
    return model, weights


def copy_loop_targets(model, weights):
    """(kernel tensor, checkpoint tensor) pairs a hand-written loader would copy into, shards narrowed."""
    from loadspec.reference.auto_loader import AutoWeightsLoader

    session = api.reload_session(model)  # checkpoint-format names resolve only inside a reload
    try:
        planned = AutoWeightsLoader(model).plan(weights, mapper=model.mapper)
        targets = []
        for load in planned:
            layer_name, param_name = load.name.rsplit(".", 1)
            layer = session.layers[layer_name]
            kernel = layer.kernel.get(param_name)
            if kernel is None:  # a KV-cache scale lands in its device scale
                kernel = getattr(layer.module, f"_{param_name}")
            if load.shard_id is not None:
                offset, size = layer.templates[param_name].attrs["weight_loader"].shards[load.shard_id]
                kernel = kernel.narrow(0, offset, size)
            targets.append((kernel.data.reshape(load.tensor.shape), load.tensor))
        return targets
    finally:
        session.abort()


@pytest.mark.benchmark(group="reload-vs-copy")
def test_bench_copy_loop(benchmark, loaded):
    model, weights = loaded
    targets = copy_loop_targets(model, weights)

    def copy_all():
        with torch.no_grad():
            for destination, source in targets:
                destination.copy_(source)

    benchmark.extra_info["tensors"] = len(targets)
    benchmark(copy_all)


@pytest.mark.benchmark(group="reload-vs-copy")
def test_bench_reference_reload(benchmark, loaded):
    model, weights = loaded
    benchmark.extra_info["tensors"] = len(weights)
    benchmark(api.reload, model, weights)
