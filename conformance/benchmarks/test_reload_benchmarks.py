"""Reload benchmarks for any adapter: ``pytest conformance/benchmarks --impl=NAME --device cpu|cuda``.

Each case builds a ``ModelSpec`` with the adapter, times it with pytest-benchmark, and records the
loadspec figures (GiB/s, ratio to the ceiling measured in the same run, µs per tensor, peak extra
memory) for the summary the conftest writes. Correctness is checked once per case, outside the
timed region: the reloaded kernel state equals a fresh load of the same checkpoint.
"""

from __future__ import annotations

import gc

import pytest
import torch

from loadspec.conformance.assertions import assert_same_state
from loadspec.conformance.benchmarks import harness
from loadspec.conformance.benchmarks.harness import RESULTS, Result

# A dummy load leaves the KV-cache scales unset (the reference warns so); every case reloads real ones after it.
pytestmark = pytest.mark.filterwarnings("ignore:.*the checkpoint has no k_scale or v_scale")


def _check_equals_fresh(impl, spec, weights, model, device) -> bool:
    fresh = impl.build_model(spec, device=device)
    impl.first_load(fresh, weights)
    assert_same_state("kernel state after the timed reloads vs a fresh load", impl.export_kernel_state(model),
                      impl.export_kernel_state(fresh), "RELOAD-2")
    del fresh
    gc.collect()
    return True


def _reloaded_model(impl, spec, weights, device):
    """A model of ``spec`` on ``device``, dummy-loaded (so the first reload changes every value)."""
    model = impl.build_model(spec, device=device)
    impl.dummy_load(model)
    return model


def _ceiling(weights, device, bench_size) -> tuple[str, float]:
    """The ceiling (``harness.ceiling``) and its median seconds, measured now, beside the case it bounds."""
    describe, move = harness.ceiling(weights, device)
    seconds = harness.median_time(move, device, rounds=bench_size.rounds, warmup=1)
    del move
    gc.collect()
    return describe, seconds


def _peak(impl, model, weights, device) -> int:
    with harness.PeakMemory(device) as peak:
        impl.reload(model, harness.delivered(weights))
    return peak.extra


def _skip_unless(impl, *capabilities: str) -> None:
    lacking = [c for c in capabilities if c not in impl.capabilities]
    if lacking:
        pytest.skip(f"{impl.name} does not declare capability {', '.join(lacking)}")


@pytest.fixture(scope="module")
def throughput_checkpoints(bench_size, device):
    """One checkpoint per weight format, built once (the largest cost of the module on CPU)."""
    cache: dict[str, tuple] = {}

    def get(variant: str):
        if variant not in cache:
            spec = harness.llama_spec(bench_size.throughput, harness.QUANTS[variant])
            cache[variant] = (spec, harness.checkpoint(spec, device))
        return cache[variant]

    yield get
    cache.clear()


# ------------------------------------------------------------------ throughput
@pytest.mark.parametrize("variant", list(harness.QUANTS))
def test_throughput(benchmark, impl, device, bench_size, throughput_checkpoints, variant):
    _skip_unless(impl, *harness.CAPABILITIES_OF[variant])
    benchmark.group = "throughput"
    spec, weights = throughput_checkpoints(variant)
    model = _reloaded_model(impl, spec, weights, device)
    impl.reload(model, weights)
    correct = _check_equals_fresh(impl, spec, weights, model, device)
    describe, ceiling_s = _ceiling(weights, device, bench_size)
    seconds = harness.timed_rounds(benchmark, lambda: impl.reload(model, harness.delivered(weights)), device,
                                   rounds=bench_size.rounds, warmup=bench_size.warmup)
    result = Result("throughput", variant, len(weights), harness.nbytes(weights), seconds, ceiling_s, describe,
                    _peak(impl, model, weights, device), harness.state_bytes(impl, model), correct,
                    largest_layer_bytes=harness.largest_layer_bytes(spec, weights))
    benchmark.extra_info.update(result.as_json())
    RESULTS.append(result)


# ------------------------------------------------------------- per-tensor overhead
def test_per_tensor_overhead(benchmark, impl, device, bench_size):
    _skip_unless(impl, "model")
    benchmark.group = "per-tensor"
    spec = harness.small_tensors_spec(bench_size.small_layers)
    weights = harness.checkpoint(spec, device)
    model = _reloaded_model(impl, spec, weights, device)
    impl.reload(model, weights)
    correct = _check_equals_fresh(impl, spec, weights, model, device)
    copy_s = harness.median_time(harness.copy_loop(weights, device), device, rounds=bench_size.rounds, warmup=1)
    seconds = harness.timed_rounds(benchmark, lambda: impl.reload(model, harness.delivered(weights)), device,
                                   rounds=bench_size.rounds, warmup=bench_size.warmup)
    result = Result("per_tensor", f"{len(weights)} small tensors", len(weights), harness.nbytes(weights), seconds,
                    copy_s, "copy_ loop over the same tensors", correct=correct)
    benchmark.extra_info.update(result.as_json())
    RESULTS.append(result)


# ---------------------------------------------------------------------- scaling
def _scaling(benchmark, impl, device, bench_size, case: str, spec) -> None:
    weights = harness.checkpoint(spec, device)
    model = _reloaded_model(impl, spec, weights, device)
    seconds = harness.timed_rounds(benchmark, lambda: impl.reload(model, harness.delivered(weights)), device,
                                   rounds=bench_size.rounds, warmup=bench_size.warmup)
    describe, ceiling_s = _ceiling(weights, device, bench_size)
    result = Result(case, f"{len(weights)} tensors, {harness.nbytes(weights) / harness.MIB:.1f} MiB",
                    len(weights), harness.nbytes(weights), seconds, ceiling_s, describe)
    benchmark.extra_info.update(result.as_json())
    RESULTS.append(result)


@pytest.mark.parametrize("point", range(4))
def test_scaling_with_tensor_count(benchmark, impl, device, bench_size, point):
    _skip_unless(impl, "model")
    benchmark.group = "scaling-tensors"
    _scaling(benchmark, impl, device, bench_size, "scaling_tensors",
             harness.small_tensors_spec(bench_size.count_points[point]))


@pytest.mark.parametrize("point", range(4))
def test_scaling_with_bytes(benchmark, impl, device, bench_size, point):
    _skip_unless(impl, *harness.CAPABILITIES_OF["fp8_per_tensor"])
    benchmark.group = "scaling-bytes"
    _scaling(benchmark, impl, device, bench_size, "scaling_bytes", harness.bytes_spec(bench_size.bytes_points[point]))


# ------------------------------------------------------------- delivery patterns
def _in_session(impl, model, parts) -> None:
    session = impl.open_reload(model)
    for part in parts:
        session.load(harness.delivered(part))
    session.finish()


PATTERNS = ("one call", "one tensor per call", "buckets", "shuffled", "directory")


@pytest.mark.parametrize("pattern", PATTERNS)
def test_delivery_pattern(benchmark, impl, device, bench_size, throughput_checkpoints, pattern, tmp_path_factory):
    """How RL frameworks send an update: the whole checkpoint in one call; one tensor per call (OpenRLHF, TRL);
    buckets of N MiB (verl, slime); shuffled; a safetensors directory on disk (page cache warm)."""
    variant = "fp8_per_tensor"
    _skip_unless(impl, *harness.CAPABILITIES_OF[variant])
    if pattern in ("one tensor per call", "buckets"):
        _skip_unless(impl, "reload_sessions")
    benchmark.group = "delivery"
    spec, weights = throughput_checkpoints(variant)
    label = f"buckets of {bench_size.bucket_mib} MiB" if pattern == "buckets" else pattern
    if pattern == "one tensor per call":
        run = lambda: _in_session(impl, model, [[item] for item in weights])  # noqa: E731
    elif pattern == "buckets":
        parts = harness.buckets(weights, bench_size.bucket_mib)
        run = lambda: _in_session(impl, model, parts)  # noqa: E731
    elif pattern == "shuffled":
        order = harness.shuffled(weights)
        run = lambda: impl.reload(model, harness.delivered(order))  # noqa: E731
    elif pattern == "directory":
        from safetensors.torch import save_file

        directory = tmp_path_factory.mktemp("checkpoint")
        save_file({name: tensor.contiguous() for name, tensor in weights}, str(directory / "model.safetensors"))
        run = lambda: impl.reload(model, directory)  # noqa: E731
    else:
        run = lambda: impl.reload(model, harness.delivered(weights))  # noqa: E731
    model = _reloaded_model(impl, spec, weights, device)
    with harness.PeakMemory(device) as peak:
        run()
    correct = _check_equals_fresh(impl, spec, weights, model, device)
    seconds = harness.timed_rounds(benchmark, run, device, rounds=bench_size.rounds, warmup=bench_size.warmup)
    describe, ceiling_s = _ceiling(weights, device, bench_size)
    result = Result("delivery", label, len(weights), harness.nbytes(weights), seconds, ceiling_s, describe,
                    peak_extra_bytes=peak.extra, state_bytes=harness.state_bytes(impl, model), correct=correct,
                    largest_layer_bytes=harness.largest_layer_bytes(spec, weights))
    benchmark.extra_info.update(result.as_json())
    RESULTS.append(result)


# ------------------------------------------------------------ first load vs reload
@pytest.mark.parametrize("phase", ["first load", "reload"])
def test_first_load_vs_reload(benchmark, impl, device, bench_size, throughput_checkpoints, phase):
    variant = "fp8_per_tensor"
    _skip_unless(impl, *harness.CAPABILITIES_OF[variant])
    benchmark.group = "first-load-vs-reload"
    spec, weights = throughput_checkpoints(variant)
    if phase == "first load":
        def fresh_model():
            gc.collect()
            return (impl.build_model(spec, device=device),)

        seconds = harness.timed_rounds(benchmark, lambda model: impl.first_load(model, harness.delivered(weights)),
                                       device, rounds=bench_size.rounds, warmup=0, setup=fresh_model)
    else:
        model = _reloaded_model(impl, spec, weights, device)
        seconds = harness.timed_rounds(benchmark, lambda: impl.reload(model, harness.delivered(weights)), device,
                                       rounds=bench_size.rounds, warmup=bench_size.warmup)
    describe, ceiling_s = _ceiling(weights, device, bench_size)
    result = Result("first_load", phase, len(weights), harness.nbytes(weights), seconds, ceiling_s, describe)
    benchmark.extra_info.update(result.as_json())
    RESULTS.append(result)
    if device == "cuda":
        torch.cuda.empty_cache()
