"""Profile the reference reload of a benchmark case on CPU (one thread): timing, then cProfile's top entries.

``python reports/benchmarks/profiles/cpuprof.py small`` made ``before-per-tensor-cpu.txt`` (at bd5d521~1) and
``after-per-tensor-cpu.txt``; ``bf16``, ``fp8`` and ``fp8c`` are the medium throughput models.
"""

import cProfile
import io
import pstats
import sys
import warnings

import torch

from loadspec.conformance.benchmarks import harness
from loadspec.reference import api

CASES = {"small": lambda size: harness.small_tensors_spec(size.small_layers),
         "bf16": lambda size: harness.llama_spec(size.throughput, "none"),
         "fp8": lambda size: harness.llama_spec(size.throughput, "fp8_per_tensor"),
         "fp8c": lambda size: harness.llama_spec(size.throughput, "fp8_per_channel")}


def profile_case(name: str, rounds: int = 3) -> None:
    spec = CASES[name](harness.SIZES["medium"])
    weights = harness.checkpoint(spec, "cpu")
    model = api.build(spec)
    api.dummy_load(model)
    api.reload(model, weights)
    copy_s = harness.median_time(harness.copy_loop(weights, "cpu"), "cpu", rounds=rounds, warmup=1)
    reload_s = harness.median_time(lambda: api.reload(model, weights), "cpu", rounds=rounds, warmup=1)
    print(f"{name}: tensors={len(weights)} MiB={harness.nbytes(weights) / 2**20:.1f} copy={copy_s * 1e3:.2f}ms "
          f"reload={reload_s * 1e3:.2f}ms ratio={reload_s / copy_s:.2f} "
          f"per-tensor-overhead={(reload_s - copy_s) / len(weights) * 1e6:.1f}us", flush=True)
    profiler = cProfile.Profile()
    profiler.enable()
    api.reload(model, weights)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(25)
    stats.sort_stats("tottime").print_stats(12)
    print(out.getvalue())


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    for case in sys.argv[1:]:
        profile_case(case)
