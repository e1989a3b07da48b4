"""Benchmark of the whole end-to-end check (``loadspec.conformance.e2e.run_check``): a measurement, no timed asserts.

One round runs every SmolLM2 case of ``conformance/test_e2e.py`` on the implementation
under test (``--impl``, default the reference): per producer layout a dummy load, a reload,
an export, a fresh first load, two perplexities and a state comparison, plus the KV-scales/16
case. The quantized checkpoints are cached beforehand, so the figure is the warm-cache cost.
``--benchmark-skip`` or ``-m "not benchmark"`` leaves it out; ``extra_info`` holds the
perplexities and the per-step seconds of the last round.
"""

from __future__ import annotations

import pytest

from loadspec.conformance import e2e
from loadspec.conformance.assertions import skip_unless

pytestmark = [pytest.mark.benchmark, pytest.mark.e2e]


@pytest.fixture(scope="module")
def warm_cache(smollm):
    """Every quantized checkpoint the check reads, written before timing starts."""
    e2e.smollm_checkpoint()
    for producer, strategy in e2e.CASES:
        e2e.quantized_checkpoint(producer, weight_strategy=strategy)
    producer, strategy = e2e.BROKEN_CASE
    e2e.quantized_checkpoint(producer, weight_strategy=strategy, scale_multiplier=e2e.BROKEN_SCALE_MULTIPLIER)
    e2e.load_tokenizer(e2e.smollm_checkpoint())


def test_bench_whole_e2e_check(benchmark, impl, warm_cache, device):
    skip_unless(impl, "model", "tied_embeddings", "fp8_per_tensor", "fp8_per_channel",
                *(["cuda"] if device == "cuda" else []))
    results = benchmark.pedantic(e2e.run_check, args=(impl,), kwargs={"device": device}, rounds=1, iterations=1)
    benchmark.extra_info["cases"] = {
        r.label(): {"perplexity": r.perplexity, "fresh_perplexity": r.fresh_perplexity,
                    "identical_to_fresh": None if r.differences is None else not r.differences,
                    "seconds": {k: round(v, 3) for k, v in r.timings.items()}}
        for r in results}
    print("\n" + e2e.format_results(results))
