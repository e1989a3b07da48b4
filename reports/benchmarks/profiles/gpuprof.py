"""Profile one reference reload per format on CUDA at full size: torch.profiler's table, then cProfile's.

``python3 reports/benchmarks/profiles/gpuprof.py fp8_per_tensor fp8_per_channel bf16`` (what made
``h200-after.txt``): builds the benchmark model, dummy-loads it, reloads twice to warm up, prints the
minimum of 5 timed reloads, then profiles one more.
"""

import cProfile
import io
import pstats
import sys
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from loadspec.conformance.benchmarks import harness
from loadspec.reference import api


def reload_once(model, weights) -> None:
    api.reload(model, weights)
    torch.cuda.synchronize()


def main(variants: list[str]) -> None:
    warnings.filterwarnings("ignore")
    full = harness.SIZES["full"]
    for variant in variants:
        spec = harness.llama_spec(full.throughput, harness.QUANTS[variant])
        weights = harness.checkpoint(spec, "cuda")
        model = api.build(spec, device="cuda")
        api.dummy_load(model)
        for _ in range(2):
            reload_once(model, weights)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            reload_once(model, weights)
            times.append(time.perf_counter() - start)
        print(f"== {variant}: reload min {min(times) * 1e3:.2f} ms over 5", flush=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            reload_once(model, weights)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
        profiler = cProfile.Profile()
        profiler.enable()
        reload_once(model, weights)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
        print(out.getvalue())
        del model, weights
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1:])
