"""Checkpoints written by the real producer tools, then ``loadspec check`` and the E2E run on them [E2E-1, E2E-2].

``make real-checkpoints`` (never part of ``make test``) builds ``.venv-producers`` (torch 2.13.0
CPU, llm-compressor, compressed-tensors; ``producers/constraints.txt``) and runs
``python -m loadspec.conformance.e2e.real_tools``, which:

1. quantizes the embedded SmolLM2-135M (``smollm``) with the real llm-compressor ``oneshot``
   on CPU, once per recipe of ``producers/llmcompressor_fp8.py`` (``RECIPES``), calibrated on
   the sentences of ``quantizer.DEFAULT_CALIBRATION_TEXT``, into ``<loadspec cache>/real-tools``;
2. records what the tool wrote (``manifest``: ``config.json``'s ``quantization_config`` and
   ``dtype``, every tensor name pattern with its dtype and shape, the tool versions and
   seconds) as ``reports/e2e/real-tools/<recipe>.json``: the fixtures of
   ``tests/test_spec_inference.py``;
3. runs ``loadspec check`` and the E2E reload (fresh and reloaded perplexity, every scale
   compared with the file) through the reference, and writes ``reports/e2e/real-tools-cpu.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from loadspec.conformance import selection
from loadspec.conformance.check import check
from loadspec.conformance.e2e.cache import cache_root
from loadspec.conformance.e2e.checkpoints import CheckpointError
from loadspec.conformance.e2e.quantizer import DEFAULT_CALIBRATION_TEXT
from loadspec.conformance.e2e.run import run_reload
from loadspec.conformance.e2e.smollm import checkpoint_dir
from loadspec.reference.checkpoint import open_checkpoint, read_config

RECIPES = ("fp8-static-tensor", "fp8-static-attn-head", "fp8-dynamic-channel-bf16")
"""The recipes of ``producers/llmcompressor_fp8.py`` (the three checkpoints issue 10's done-when names)."""
REPO = Path(__file__).resolve().parents[2]
PRODUCER_SCRIPT = REPO / "producers" / "llmcompressor_fp8.py"
REPORT_DIR = REPO / "reports" / "e2e" / "real-tools"
REPORT_FILE = REPO / "reports" / "e2e" / "real-tools-cpu.txt"
_LAYER = re.compile(r"layers\.\d+\.")


def calibration_sentences(text: str = DEFAULT_CALIBRATION_TEXT) -> list[str]:
    """The calibration text split into sentences: one calibration sample each."""
    return [s.strip() for s in re.split(r"(?<=\.)\s+", text) if s.strip()]


def real_dir(recipe: str) -> Path:
    """Where the real tool's checkpoint of ``recipe`` is written: ``<loadspec cache>/real-tools/<recipe>``."""
    return cache_root() / "real-tools" / recipe


def produce(recipe: str, python: str, *, source: Path | None = None) -> Path:
    """Run the real tool (``python`` is ``.venv-producers``' interpreter) for ``recipe``; the checkpoint dir."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r}, but should be one of {RECIPES}")
    source = source or checkpoint_dir()
    out = real_dir(recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    calibration = out.parent / "calibration.txt"
    calibration.write_text("\n".join(calibration_sentences()) + "\n")
    subprocess.run([python, str(PRODUCER_SCRIPT), str(source), str(out), recipe, str(calibration)], check=True,
                   env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"),
                   stdout=subprocess.DEVNULL)
    return out


def manifest(path: Path) -> dict[str, Any]:
    """What a checkpoint holds: its ``quantization_config`` and dtype, each tensor pattern's dtype and shape."""
    config = read_config(path)
    patterns: Counter[tuple[str, str, tuple[int, ...]]] = Counter()
    for name, info in open_checkpoint(path).tensors.items():
        patterns[(_LAYER.sub("layers.N.", name), info.dtype_code, tuple(info.shape))] += 1
    run_file = path / "producer-run.json"
    return {"producer_run": json.loads(run_file.read_text()) if run_file.is_file() else None,
            "config": {k: config[k] for k in ("dtype", "torch_dtype", "tie_word_embeddings", "num_key_value_heads",
                                              "num_attention_heads", "quantization_config") if k in config},
            "tensors": [{"name": name, "dtype": dtype, "shape": list(shape), "count": count}
                        for (name, dtype, shape), count in sorted(patterns.items())]}


def _e2e_lines(path: Path, impl: str) -> list[str]:
    """The E2E reload of ``path`` through adapter ``impl``: perplexities and the scales compared, or why not."""
    try:
        result = run_reload(selection.resolve(impl), path)
    except CheckpointError as exc:
        return [f"  E2E: skipped: {exc}"]
    except Exception as exc:  # noqa: BLE001 - an implementation's failure is the measurement, named in the report
        return [f"  E2E ({impl}, cpu): the implementation raised {type(exc).__name__}: {exc}"]
    mismatches = result.scale_mismatches()
    fresh = "-" if result.fresh_perplexity is None else f"{result.fresh_perplexity:.4f}"
    differs = "identical" if not result.differences else (
        f"{len(result.differences)} tensors differ, e.g. {next(iter(result.differences.items()))}")
    return [f"  E2E ({impl}, cpu, {result.spec.params_dtype}): perplexity reloaded {result.perplexity:.4f}, "
            f"fresh {fresh}, kernel state vs fresh: {differs}, {result.timings['total']:.1f} s",
            f"  scales compared with the file: {result.scales_compared} ({len(mismatches)} mismatches)"
            + ("" if not mismatches else f", e.g. {mismatches[0]}")]


def main(argv: list[str] | None = None) -> int:
    """Produce (unless ``--no-produce``), record, check and run E2E for every recipe; write the report."""
    parser = argparse.ArgumentParser(prog="python -m loadspec.conformance.e2e.real_tools", description=__doc__)
    parser.add_argument("--producer-python", default=str(REPO / ".venv-producers" / "bin" / "python"))
    parser.add_argument("--no-produce", action="store_true", help="reuse the checkpoints already in the cache")
    parser.add_argument("--recipe", action="append", choices=RECIPES)
    parser.add_argument("--report-dir", type=Path, default=REPORT_DIR)
    parser.add_argument("--report", type=Path, default=REPORT_FILE)
    parser.add_argument("--impl", default="reference", help="the adapter the check and the E2E run ask")
    args = parser.parse_args(argv)
    args.report_dir.mkdir(parents=True, exist_ok=True)
    lines = ["Real-tool checkpoints: SmolLM2-135M-Instruct quantized by llm-compressor oneshot on CPU",
             f"(make real-checkpoints; python -m loadspec.conformance.e2e.real_tools --impl {args.impl})", ""]
    for recipe in args.recipe or RECIPES:
        start = time.perf_counter()
        path = real_dir(recipe) if args.no_produce else produce(recipe, args.producer_python)
        produced = time.perf_counter() - start
        record = manifest(path)
        if not args.no_produce:  # what the tool wrote is recorded when it wrote it
            (args.report_dir / f"{recipe}.json").write_text(json.dumps(record, indent=1) + "\n")
        run = record["producer_run"] or {}
        versions = ", ".join(f"{k} {v}" for k, v in (run.get("versions") or {}).items())
        lines += [f"== {recipe}: {versions}",
                  f"  tool seconds: {run.get('seconds')} (wall {produced:.1f} s with start-up)"]
        report = check(path, impl=None if args.impl == "reference" else args.impl)
        shown = [line for line in report.text().splitlines() if not line.startswith(("    model.layers.", "  layer"))
                 or line.startswith(("  layer 0:", "    model.layers.0."))]  # layer 0's rows stand for the others
        lines += [f"  loadspec check: exit {report.exit_code}"] + ["    " + line for line in shown]
        lines += _e2e_lines(path, args.impl)
        lines.append("")
    args.report.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["RECIPES", "PRODUCER_SCRIPT", "REPORT_DIR", "REPORT_FILE", "calibration_sentences", "real_dir", "produce",
           "manifest", "main"]
