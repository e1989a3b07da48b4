"""``python -m loadspec.conformance.e2e``: run the E2E cases (or one user checkpoint) and print their figures."""

from __future__ import annotations

import argparse
import os
import sys

from loadspec.conformance import selection
from loadspec.conformance.e2e.checkpoints import CHECKPOINT_ENV, CheckpointError, resolve_checkpoint
from loadspec.conformance.e2e.run import BROKEN_CASE, CASES, E2EResult, run_check, run_reload


def format_results(results: list[E2EResult]) -> str:
    """A table: case, dtype, perplexity after reload, after a fresh load, state differences, seconds; then per case
    the scales compared with the file and how many differ (a silent 1.0 shows here) [E2E-1, E2E-2]."""
    lines = [f"{'case':44s} {'dtype':>9s} {'reloaded':>12s} {'fresh':>12s} {'state':>10s} {'seconds':>8s}"]
    for r in results:
        fresh = "-" if r.fresh_perplexity is None else f"{r.fresh_perplexity:12.4f}"
        state = "-" if r.differences is None else ("identical" if not r.differences else f"{len(r.differences)} diff")
        lines.append(f"{r.label():44s} {r.spec.params_dtype:>9s} {r.perplexity:12.4f} {fresh:>12s} {state:>10s} "
                     f"{r.timings['total']:8.2f}")
    for r in results:
        mismatches = r.scale_mismatches()
        lines.append(f"  {r.label()}: scales compared with the file: {r.scales_compared}; "
                     + (f"{len(mismatches)} differ, e.g. {mismatches[0][0]}={mismatches[0][1]}, file "
                        f"{mismatches[0][2]}" if mismatches else "all equal"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the end-to-end check and print its results; 2 (with every reason) for a checkpoint it cannot score.

    ``python -m loadspec.conformance.e2e [--impl NAME] [--device cpu|cuda]
    [--checkpoint DIR_OR_HUB_ID] [--producer ID]``
    """
    parser = argparse.ArgumentParser(prog="python -m loadspec.conformance.e2e", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--impl", default=None, help="adapter (default: $LOADSPEC_IMPL, else reference)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", default=os.environ.get(CHECKPOINT_ENV) or None,
                        help=f"a user FP8-KV checkpoint instead of the SmolLM2 cases (default: ${CHECKPOINT_ENV})")
    parser.add_argument("--producer", action="append", choices=sorted({p for p, _ in CASES}),
                        help="run only this producer's SmolLM2 cases (repeatable; default: every case)")
    parser.add_argument("--strategy", action="append", choices=sorted({s for _, s in CASES}),
                        help="run only cases with this weight strategy (repeatable; default: both)")
    parser.add_argument("--activation-scheme", choices=("static", "dynamic"), default=None,
                        help="quantize the SmolLM2 cases static W8A8 (an input_scale per FP8 linear) or dynamic "
                             "(default: each format's own)")
    args = parser.parse_args(argv)
    adapter = selection.resolve(selection.chosen_name(args.impl))
    if args.checkpoint:
        try:
            results = [run_reload(adapter, resolve_checkpoint(args.checkpoint), device=args.device)]
        except CheckpointError as exc:  # every reason at once, never a traceback
            print(f"loadspec e2e: cannot score {args.checkpoint}: {exc}", file=sys.stderr)
            return 2
    else:
        cases = [(p, s) for p, s in CASES if (not args.producer or p in args.producer)
                 and (not args.strategy or s in args.strategy)]
        broken = BROKEN_CASE if not args.producer or BROKEN_CASE[0] in args.producer else None
        results = run_check(adapter, device=args.device, cases=cases, broken_case=broken,
                            activation_scheme=args.activation_scheme)
    print(format_results(results))
    return 0


__all__ = ["format_results", "main"]
