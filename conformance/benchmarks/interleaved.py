"""Several adapters and the plain copy loop timed round-robin in one process, on the same tensors.

``python -m loadspec.conformance.benchmarks interleaved --impl reference --impl vllm [--size medium]
[--rounds 7] [--out DIR]``: for each case (FP8 per-tensor, bf16, 1,059 small tensors) every adapter builds
the same ``ModelSpec``, dummy-loads it and reloads it once (warm-up); then each round times one reload per
adapter and one copy loop, in turn. On a shared CPU the load drifts within seconds, so figures taken
minutes apart by separate ``--impl`` sessions are not comparable; round-robin minima are. Writes
``interleaved.json`` and ``interleaved.md`` to ``--out`` (default: print only).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadspec.conformance.benchmarks import harness
from loadspec.conformance.selection import resolve

CASES = ("fp8_per_tensor", "bf16", "small tensors")


def _spec(case: str, size: harness.Size):
    if case == "small tensors":
        return harness.small_tensors_spec(size.small_layers)
    return harness.llama_spec(size.throughput, harness.QUANTS[case])


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(impls: list[str], size_name: str, rounds: int, cases: tuple[str, ...] = CASES) -> dict[str, Any]:
    """Minimum seconds per (case, adapter or copy loop) over ``rounds`` round-robin rounds, on CPU."""
    warnings.filterwarnings("ignore", message=".*the checkpoint has no k_scale or v_scale")
    size = harness.SIZES[size_name]
    adapters = [resolve(name) for name in impls]
    results: list[dict[str, Any]] = []
    for case in cases:
        spec = _spec(case, size)
        weights = harness.checkpoint(spec, "cpu")
        runs: dict[str, Callable[[], object]] = {"copy loop": harness.copy_loop(weights, "cpu")}
        for adapter in adapters:
            model = adapter.build_model(spec, device="cpu")
            adapter.dummy_load(model)
            adapter.reload(model, weights)

            def reload(adapter=adapter, model=model, weights=weights) -> None:
                adapter.reload(model, weights)

            runs[f"{adapter.name} {adapter.version}"] = reload
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, fn in runs.items():
                times[name].append(_seconds(fn))
        best = {name: min(values) for name, values in times.items()}
        results.append({"case": case, "tensors": len(weights), "bytes": harness.nbytes(weights), "rounds": rounds,
                        "min_seconds": best, "all_seconds": times})
    return {"size": size_name, "device": harness.device_description("cpu"), "cases": results}


def markdown(document: dict[str, Any]) -> str:
    """One row per case and adapter: minimum ms, × the copy loop, µs per tensor over it, × the first adapter."""
    lines = [f"Round-robin minima over {document['cases'][0]['rounds']} rounds, size `{document['size']}`, "
             f"CPU ({document['device'].get('cpu_threads', '?')} threads).", "",
             "| case | tensors | MiB | implementation | min ms | × copy loop | overhead µs/tensor | × first |",
             "|---|---|---|---|---|---|---|---|"]
    for case in document["cases"]:
        best = case["min_seconds"]
        copy = best["copy loop"]
        names = [n for n in best if n != "copy loop"]
        for name in ["copy loop", *names]:
            seconds = best[name]
            over = "" if name == "copy loop" else f"{(seconds - copy) / case['tensors'] * 1e6:.1f}"
            first = "" if name == "copy loop" else f"{seconds / best[names[0]]:.2f}"
            lines.append(f"| {case['case']} | {case['tensors']} | {case['bytes'] / harness.MIB:.1f} | {name} | "
                         f"{seconds * 1e3:.3g} | {seconds / copy:.2f} | {over} | {first} |")
    return "\n".join(lines) + "\n"


def write(document: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "interleaved.json", directory / "interleaved.md"]
    paths[0].write_text(json.dumps(document, indent=2) + "\n")
    paths[1].write_text(markdown(document))
    return paths
