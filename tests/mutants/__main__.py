"""Run the suite on one mutant for several Hypothesis seeds in one process; print each seed's rule outcomes as JSON.

``PYTHONPATH=tests python -m mutants mutants.left_wins:LeftWinsAdapter --seeds 0 1 2 --out DIR``
runs the mutant's ``suite`` modules, restricted to the tests citing its ``targets``, once per seed
(profile ``loadspec-meta``: generation only, no shrinking), writes ``DIR/seed-<S>/conformance.json``
and prints ``{"<seed>": {"RULE-ID": "fail", ...}, ...}`` as the last line. One process for all seeds
keeps torch's import (most of a small run's time) to one per mutant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from mutants import SUITE_DIR, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mutants", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="module:Class, e.g. mutants.left_wins:LeftWinsAdapter")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    mutant = load(args.target)
    outcomes: dict[str, dict[str, str]] = {}
    for seed in args.seeds:
        report_dir = args.out / f"seed-{seed}"
        command = [*(str(SUITE_DIR / module) for module in mutant.suite), f"--impl={args.target}",
                   *(f"--rule={rule}" for rule in mutant.targets), f"--loadspec-report={report_dir}",
                   f"--hypothesis-seed={seed}", "--hypothesis-profile=loadspec-meta", "-q", "-p", "no:warnings",
                   "-p", "no:cacheprovider"]
        pytest.main(command)
        report = report_dir / "conformance.json"
        rules = json.loads(report.read_text())["rules"] if report.exists() else []
        outcomes[str(seed)] = {rule["id"]: rule["outcome"] for rule in rules if rule["id"] in mutant.targets}
    print(json.dumps(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
