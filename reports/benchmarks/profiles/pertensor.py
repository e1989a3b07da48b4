"""Per-tensor overhead of the reference reload (1,059 small tensors, medium) on CPU, one thread, as the
``interleaved`` command measures it (minimum of ROUNDS reloads, beside a copy loop), with the source tree it ran.

``python reports/benchmarks/profiles/pertensor.py LABEL [ROUNDS]``; for a before/after pair, alternate it with
a copy of an earlier commit's tree first on ``PYTHONPATH`` (``git archive COMMIT reference conformance strategies``
unpacked under ``DIR/loadspec``) and without it.
"""

import sys
import warnings

import torch

from loadspec.conformance.benchmarks.interleaved import measure
from loadspec.reference import auto_loader

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
document = measure(["reference"], "medium", int(sys.argv[2]) if len(sys.argv) > 2 else 15, ("small tensors",))
case = document["cases"][0]
best = case["min_seconds"]
reload_s = next(seconds for name, seconds in best.items() if name != "copy loop")
print(f"{sys.argv[1]} ({auto_loader.__file__}): tensors={case['tensors']} copy={best['copy loop'] * 1e3:.2f}ms "
      f"reload={reload_s * 1e3:.2f}ms per-tensor={(reload_s - best['copy loop']) / case['tensors'] * 1e6:.1f}us")
