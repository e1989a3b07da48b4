"""Wall time of each phase of the reference reload of the 1,059 small tensors on CPU (one thread), per reload and
per tensor: ``python reports/benchmarks/profiles/phases.py [ROUNDS]``.

Each listed function is wrapped with a ``perf_counter`` timer (nested phases count in their callers too: ``plan``
includes ``check_loadable`` and ``loadable_tensors``; ``_finish_streaming`` includes ``_finish_attention``), which
costs far less than cProfile's per-call hook, so the shares are those of an unprofiled reload.
"""

import collections
import functools
import importlib
import sys
import time
import warnings

import torch

from loadspec.conformance.benchmarks import harness
from loadspec.reference import api

reload_module = importlib.import_module("loadspec.reference.reload")
auto_loader = importlib.import_module("loadspec.reference.auto_loader")
session = reload_module.ReloadSession
PHASES = [(session, "_begin"), (auto_loader.AutoWeightsLoader, "plan"), (auto_loader, "loadable_tensors"),
          (auto_loader, "output_buffer_names"), (auto_loader, "check_loadable"), (session, "_deliver_all"),
          (session, "_process_layer"), (session, "_replay"), (session, "_finish_streaming"),
          (session, "_finish_attention"), (session, "_dry_count"), (session, "_backup")]
spent: collections.Counter[str] = collections.Counter()


def timed(owner: object, name: str) -> None:
    function = getattr(owner, name)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def main(rounds: int) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    for owner, name in PHASES:
        timed(owner, name)
    spec = harness.small_tensors_spec(harness.SIZES["medium"].small_layers)
    weights = harness.checkpoint(spec, "cpu")
    model = api.build(spec)
    api.dummy_load(model)
    api.reload(model, weights)
    spent.clear()
    start = time.perf_counter()
    for _ in range(rounds):
        api.reload(model, weights)
    total = (time.perf_counter() - start) / rounds
    print(f"reload of {len(weights)} tensors: {total * 1e3:.1f} ms ({total / len(weights) * 1e6:.1f} us per tensor, "
          f"mean of {rounds}, timers included)")
    for name, seconds in spent.most_common():
        print(f"  {name:22} {seconds / rounds * 1e3:7.2f} ms  {seconds / rounds / len(weights) * 1e6:6.1f} us/tensor")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
