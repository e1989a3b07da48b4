"""Peak extra memory of the reference reload on CPU (one thread), against the largest layer's checkpoint bytes.

``python reports/benchmarks/profiles/memprof.py [--before OLD_LINEAR_PY]`` reloads the medium FP8 models (per-tensor,
per-channel) in four ways: the whole checkpoint in one ``api.reload`` call (transactional), a streaming session
fed one tensor per call, and both shuffled. Each figure is the largest of ``--repeat`` runs of
``harness.PeakMemory`` (RSS sampled every 0.5 ms: a lower bound). ``--before`` takes a ``reference/layers/linear.py``
of an earlier commit (``git show c964e4d:reference/layers/linear.py > /tmp/linear_before.py``) and patches its
``Fp8LinearMethod.process_weights_after_loading`` in, so that before and after run in one process.
"""

import argparse
import importlib.util
import warnings

import torch

from loadspec.conformance.benchmarks import harness
from loadspec.reference import api
from loadspec.reference.layers import linear

MIB = 2**20


def _one_tensor_per_call(model, weights) -> None:
    session = api.reload_session(model)
    for item in weights:
        session.load([item])
    session.finish()


PATTERNS = {"one call": lambda model, weights: api.reload(model, weights),
            "one tensor per call": _one_tensor_per_call}


def patch_before(path: str) -> None:
    spec = importlib.util.spec_from_file_location("linear_before", path)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    linear.Fp8LinearMethod.process_weights_after_loading = old.Fp8LinearMethod.process_weights_after_loading


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", default="medium")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if args.before:
        patch_before(args.before)
    size = harness.SIZES[args.size]
    print(f"{'before' if args.before else 'after'}: peak extra RSS, MiB (x largest layer), max of {args.repeat}")
    for quant in ("fp8_per_tensor", "fp8_per_channel"):
        spec = harness.llama_spec(size.throughput, quant)
        weights = harness.checkpoint(spec, "cpu")
        largest = harness.largest_layer_bytes(spec, weights)
        model = api.build(spec)
        api.dummy_load(model)
        api.reload(model, weights)
        for order_name, order in (("in order", weights), ("shuffled", harness.shuffled(weights))):
            for pattern, run in PATTERNS.items():
                extra = 0
                for _ in range(args.repeat):
                    with harness.PeakMemory("cpu") as peak:
                        run(model, order)
                    extra = max(extra, peak.extra)
                print(f"  {quant:16} {order_name:9} {pattern:20} {extra / MIB:8.1f} MiB ({extra / largest:.2f}x "
                      f"of {largest / MIB:.1f} MiB)", flush=True)


if __name__ == "__main__":
    main()
