"""The loadspec benchmark summary: ``summary.json``, a Markdown table, scaling plots, and a regression compare.

``python -m loadspec.conformance.benchmarks compare BASELINE.json NEW.json [--threshold 0.25]`` exits 1 when
a case got worse than the threshold allows: its ratio to the ceiling measured in the same run (machine-robust:
both sides of the ratio ran on the same machine), its peak extra memory, and, when both runs name the same
GPU, its absolute GiB/s. ``python -m loadspec.conformance.benchmarks render summary.json`` redraws the
Markdown and PNG from a summary; ``side-by-side A.json B.json`` prints one table of two adapters' summaries.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from loadspec.conformance.adapters.reference import loadspec_version
from loadspec.conformance.benchmarks import interleaved
from loadspec.conformance.benchmarks.harness import GIB, MIB, Result, device_description


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def fit(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Least-squares line ``seconds = slope * x + intercept`` through ``points`` (at least 2 distinct x)."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return {"slope": slope, "intercept": mean_y - slope * mean_x}


def build(adapter, device: str, size: str, results: list[Result]) -> dict[str, Any]:
    """The summary document of one benchmark session."""
    cases = [result.as_json() for result in results]
    fits: dict[str, Any] = {}
    tensors = [(c["tensors"], c["seconds"]) for c in cases if c["case"] == "scaling_tensors"]
    line = fit(tensors)
    if line:
        fits["tensors"] = {"us_per_tensor": line["slope"] * 1e6, "intercept_ms": line["intercept"] * 1e3,
                           "points": tensors}
    sizes = [(c["bytes"], c["seconds"]) for c in cases if c["case"] == "scaling_bytes"]
    line = fit(sizes)
    if line:
        fits["bytes"] = {"s_per_gib": line["slope"] * GIB, "gib_s": 1 / (line["slope"] * GIB) if line["slope"] > 0
                         else None, "intercept_ms": line["intercept"] * 1e3, "points": sizes}
    return {
        "implementation": {"name": adapter.name, "version": adapter.version,
                           "report_id": getattr(adapter, "report_id", adapter.name)},
        "device": device_description(device),
        "size": size,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"loadspec": loadspec_version(), "torch": torch.__version__,
                     "python": platform.python_version(), "pytest-benchmark": _version("pytest-benchmark"),
                     "machine": platform.machine()},
        "cases": cases,
        "fits": fits,
    }


def _fmt(value: Any, pattern: str = "{:.3g}") -> str:
    return "" if value is None else pattern.format(value)


def markdown(document: dict[str, Any]) -> str:
    """The summary as a Markdown table (what reports/benchmarks/README.md quotes)."""
    device = document["device"]
    where = device["device"] + (f" ({device['gpu']}, CUDA {device.get('cuda')})" if device.get("gpu") else
                                f" ({device.get('cpu_threads', '?')} threads)")
    versions = ", ".join(f"{k} {v}" for k, v in document["versions"].items())
    absolute = device["device"] == "cuda"
    lines = [f"# Reload benchmarks: {document['implementation']['name']} {document['implementation']['version']}"
             f" on {where}", "",
             f"Size `{document['size']}`; {document['generated']}; {versions}.", "",
             "Seconds are medians of the timed rounds; the ceiling is measured in the same run "
             + ("(one pinned host-to-device copy of the same bytes)." if absolute else
                "(a plain `copy_` loop over the same tensors); on CPU only the ratios are meant to be compared."),
             "", "| case | variant | tensors | MiB | ms | GiB/s | ceiling GiB/s | ratio | overhead µs/tensor "
                 "| peak extra MiB (× state; × largest layer) | correct |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in document["cases"]:
        peak = ""
        if c.get("peak_extra_bytes") is not None:
            shares = [f"{c[key]:.2f}×{unit}" for key, unit in (("peak_extra_fraction", ""),
                                                                  ("peak_extra_per_largest_layer", " layer"))
                      if c.get(key) is not None]
            peak = f"{c['peak_extra_bytes'] / MIB:.1f}" + (f" ({'; '.join(shares)})" if shares else "")
        lines.append(f"| {c['case']} | {c['variant']} | {c['tensors']} | {c['bytes'] / MIB:.1f} | "
                     f"{c['seconds'] * 1e3:.3g} | {_fmt(c.get('gib_s'))} | {_fmt(c.get('ceiling_gib_s'))} | "
                     f"{_fmt(c.get('ratio'), '{:.3f}')} | {_fmt(c.get('overhead_us_per_tensor'), '{:.1f}')} | "
                     f"{peak} | {'yes' if c.get('correct') else '' if c.get('correct') is None else 'NO'} |")
    fits = document.get("fits", {})
    if fits:
        lines += ["", "Fitted slopes (least squares over the scaling points):", ""]
        if "tensors" in fits:
            lines.append(f"- reload time vs tensor count: {fits['tensors']['us_per_tensor']:.1f} µs per tensor "
                         f"(intercept {fits['tensors']['intercept_ms']:.3g} ms)")
        if "bytes" in fits:
            marginal = (f"{fits['bytes']['gib_s']:.3g} GiB/s marginal" if fits["bytes"]["gib_s"] else
                        "no positive slope: the points are noise")
            lines.append(f"- reload time vs bytes: {fits['bytes']['s_per_gib'] * 1e3:.3g} ms per GiB "
                         f"({marginal}; intercept {fits['bytes']['intercept_ms']:.3g} ms)")
    return "\n".join(lines) + "\n"


def plot(document: dict[str, Any], path: Path) -> Path | None:
    """``scaling.png``: reload time against tensor count and against bytes, with the fitted lines
    (needs matplotlib: the ``bench`` extra); None when matplotlib is missing or there are no points."""
    fits = document.get("fits", {})
    if not fits:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("loadspec benchmarks: matplotlib is not installed (pip install 'loadspec[bench]'): no plot")
        return None
    device = document["device"]
    title = f"{document['implementation']['name']} on {device.get('gpu', device['device'])}"
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, scale, xlabel in ((axes[0], "tensors", 1.0, "tensors in the checkpoint"),
                                   (axes[1], "bytes", 1 / MIB, "checkpoint MiB")):
        if key not in fits:
            ax.set_visible(False)
            continue
        points = fits[key]["points"]
        xs = [x for x, _ in points]
        ax.plot([x * scale for x in xs], [y * 1e3 for _, y in points], "o", label="median reload")
        line = fit([(x, y) for x, y in points])
        assert line is not None
        span = [min(xs), max(xs)]
        label = (f"fit: {fits[key]['us_per_tensor']:.1f} µs/tensor" if key == "tensors" else
                 f"fit: {fits[key]['gib_s']:.3g} GiB/s" if fits[key]["gib_s"] else "fit: no positive slope")
        ax.plot([x * scale for x in span], [(line["slope"] * x + line["intercept"]) * 1e3 for x in span], "-",
                label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("reload ms")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(f"Reload scaling: {title} (size {document['size']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write(document: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "summary.json", directory / "summary.md"]
    written[0].write_text(json.dumps(document, indent=2) + "\n")
    written[1].write_text(markdown(document))
    png = plot(document, directory / "scaling.png")
    return written + ([png] if png else [])


# ------------------------------------------------------------------- compare
def _key(case: dict[str, Any]) -> str:
    return f"{case['case']}[{case['variant']}]"


def side_by_side(left: dict[str, Any], right: dict[str, Any]) -> str:
    """Two summaries of the same cases (two adapters, one machine) as one Markdown table, with the ratio of their
    times (right / left) and each one's ratio to the ceiling measured in its own run."""
    a, b = (f"{d['implementation']['name']} {d['implementation']['version']}" for d in (left, right))
    theirs = {_key(c): c for c in right["cases"]}
    lines = [f"| case | {a} ms | {b} ms | {b} / {a} (time) | {a} ratio to ceiling | {b} ratio to ceiling "
             f"| {a} overhead µs/tensor | {b} overhead µs/tensor |", "|---|---|---|---|---|---|---|---|"]
    for mine in left["cases"]:
        other = theirs.get(_key(mine))
        if other is None:
            continue
        lines.append(f"| {_key(mine)} | {mine['seconds'] * 1e3:.3g} | {other['seconds'] * 1e3:.3g} | "
                     f"{other['seconds'] / mine['seconds']:.2f} | {_fmt(mine.get('ratio'), '{:.3f}')} | "
                     f"{_fmt(other.get('ratio'), '{:.3f}')} | {_fmt(mine.get('overhead_us_per_tensor'), '{:.0f}')} | "
                     f"{_fmt(other.get('overhead_us_per_tensor'), '{:.0f}')} |")
    return "\n".join(lines) + "\n"


def compare(baseline: dict[str, Any], new: dict[str, Any], threshold: float, *, allow_missing: bool = False
            ) -> tuple[list[str], list[str]]:
    """``(regressions, notes)``: each case of both documents whose figures got worse by more than ``threshold``.

    Ratio to the ceiling (higher is better) always; peak extra memory (lower is better; 1 MiB of slack)
    always; absolute GiB/s only when both runs name the same GPU.
    """
    old = {_key(c): c for c in baseline["cases"]}
    same_gpu = bool(baseline["device"].get("gpu")) and baseline["device"].get("gpu") == new["device"].get("gpu")
    regressions: list[str] = []
    notes: list[str] = []
    if baseline["device"]["device"] != new["device"]["device"] or baseline.get("size") != new.get("size"):
        notes.append(f"comparing {baseline['device']['device']}/{baseline.get('size')} against "
                     f"{new['device']['device']}/{new.get('size')}: different device or size")
    for case in new["cases"]:
        before = old.get(_key(case))
        if before is None:
            notes.append(f"{_key(case)}: not in the baseline")
            continue
        checks = [("ratio to ceiling", "ratio", True)]
        if same_gpu:
            checks.append(("GiB/s", "gib_s", True))
        for label, field, higher in checks:
            was, now = before.get(field), case.get(field)
            if was is None or now is None:
                continue
            worse = now < was * (1 - threshold) if higher else now > was * (1 + threshold)
            line = f"{_key(case)} {label}: {was:.4g} -> {now:.4g} ({(now / was - 1) * 100:+.1f}%)"
            (regressions if worse else notes).append(line)
        was, now = before.get("peak_extra_bytes"), case.get("peak_extra_bytes")
        if was is not None and now is not None and now > was * (1 + threshold) + MIB:
            regressions.append(f"{_key(case)} peak extra memory: {was / MIB:.1f} -> {now / MIB:.1f} MiB")
        if case.get("correct") is False:
            regressions.append(f"{_key(case)}: reloaded state differs from a fresh load")
    missing = sorted(set(old) - {_key(c) for c in new["cases"]})
    (notes if allow_missing else regressions).extend(f"{key}: in the baseline, missing from the new run"
                                                     for key in missing)
    return regressions, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadspec.conformance.benchmarks")
    commands = parser.add_subparsers(dest="command", required=True)
    cmp = commands.add_parser("compare", help="exit 1 when NEW regressed against BASELINE beyond --threshold")
    cmp.add_argument("baseline", type=Path)
    cmp.add_argument("new", type=Path)
    cmp.add_argument("--threshold", type=float, default=0.25,
                     help="allowed relative loss per figure (default 0.25: a ratio may drop by 25%%)")
    cmp.add_argument("--allow-missing", action="store_true",
                     help="baseline cases the new run lacks (a -k subset) are notes, not regressions")
    both = commands.add_parser("side-by-side", help="one Markdown table of two summaries of the same cases")
    both.add_argument("left", type=Path)
    both.add_argument("right", type=Path)
    render = commands.add_parser("render", help="rewrite summary.md and scaling.png beside a summary.json")
    render.add_argument("summary", type=Path)
    mixed = commands.add_parser("interleaved", help="adapters and the copy loop timed round-robin on CPU")
    mixed.add_argument("--impl", action="append", required=True, help="an adapter (repeat for several)")
    mixed.add_argument("--size", default="medium", choices=["quick", "medium", "full"])
    mixed.add_argument("--rounds", type=int, default=7)
    mixed.add_argument("--out", type=Path, default=None, help="write interleaved.json/.md here")
    args = parser.parse_args(argv)
    if args.command == "interleaved":
        document = interleaved.measure(args.impl, args.size, args.rounds)
        print(interleaved.markdown(document), end="")
        for path in interleaved.write(document, args.out) if args.out else ():
            print(path)
        return 0
    if args.command == "side-by-side":
        print(side_by_side(json.loads(args.left.read_text()), json.loads(args.right.read_text())), end="")
        return 0
    if args.command == "render":
        document = json.loads(args.summary.read_text())
        for path in write(document, args.summary.parent):
            print(path)
        return 0
    baseline, new = json.loads(args.baseline.read_text()), json.loads(args.new.read_text())
    regressions, notes = compare(baseline, new, args.threshold, allow_missing=args.allow_missing)
    for line in notes:
        print(f"  ok: {line}")
    for line in regressions:
        print(f"  REGRESSION: {line}")
    verdict = "FAIL" if regressions else "pass"
    print(f"loadspec benchmarks compare ({args.baseline} -> {args.new}, threshold {args.threshold:.0%}): "
          f"{verdict}, {len(regressions)} regression(s)")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
