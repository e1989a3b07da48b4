"""The suite kills every mutant on the rules it breaks, on three seeds; every MUST rule has a mutant.

Mutants are discovered from ``tests/mutants/`` (see its ``__init__``). Each runs in a subprocess
(``python -m mutants``): its ``suite`` modules, only the tests citing its ``targets``, once per seed
in ``SEEDS`` (a fixed seed and two others: a mutant must not die by a lucky draw). The reference
itself must pass every rule of the whole suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadspec.conformance.rules import MUST, RULES, RULES_BY_ID

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
PYTEST = Path(sys.executable).with_name("pytest")
SEEDS = (0, 1, 2)

sys.path.insert(0, str(TESTS))
from mutants import discover  # noqa: E402  (tests/ is not a package; mutants is found through sys.path)

MUTANTS = discover()


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


def outcomes_per_seed(target: str, out: Path) -> dict[str, dict[str, str]]:
    """``{seed: {rule: outcome}}`` for the mutant ``target`` on every seed in ``SEEDS``."""
    command = [sys.executable, "-m", "mutants", target, "--seeds", *map(str, SEEDS), "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1800)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines, (
        f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


@pytest.mark.slow
@pytest.mark.parametrize("target", MUTANTS, ids=lambda t: t.split(":")[0].split(".")[1])
def test_suite_kills_the_mutant_on_every_seed(target, tmp_path):
    outcomes = outcomes_per_seed(target, tmp_path)
    survived = {f"seed {seed}": {rule: rules.get(rule, "not run") for rule in MUTANTS[target].targets
                                 if rules.get(rule) != "fail"}
                for seed, rules in outcomes.items()}
    survived = {seed: rules for seed, rules in survived.items() if rules}
    assert not survived, f"mutant {target} survived: {survived}, but every target should be 'fail' on seeds {SEEDS}"


def test_mutants_declare_known_rules_and_suite_modules():
    problems = [f"{target}: unknown rule {rule}" for target, cls in MUTANTS.items() for rule in cls.targets
                if rule not in RULES_BY_ID]
    problems += [f"{target}: no suite module {module}" for target, cls in MUTANTS.items()
                 for module in getattr(cls, "suite", ()) if not (ROOT / "conformance" / module).is_file()]
    problems += [f"{target}: no suite modules" for target, cls in MUTANTS.items() if not getattr(cls, "suite", ())]
    assert not problems, "\n".join(problems)


def test_every_must_rule_has_a_mutant(capsys):
    killed = {rule for cls in MUTANTS.values() for rule in cls.targets}
    unkilled = [rule for rule in RULES if rule.id not in killed]
    with capsys.disabled():
        print(f"\nrules no mutant targets ({len(unkilled)}): {' '.join(rule.id for rule in unkilled) or 'none'}")
    missing = [rule.id for rule in unkilled if rule.level == MUST]
    assert not missing, f"MUST rules without a mutant: {missing}, but every MUST rule should have one"


@pytest.mark.slow
def test_reference_passes_every_rule(tmp_path):
    command = [str(PYTEST), str(ROOT / "conformance"), "--impl=reference", f"--loadspec-report={tmp_path}",
               "--hypothesis-seed=0", "--hypothesis-profile=loadspec-meta", "-q", "-p", "no:warnings"]
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1800)
    report = tmp_path / "conformance.json"
    assert report.exists(), f"no report from {' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    bad = {rule["id"]: rule["outcome"] for rule in json.loads(report.read_text())["rules"]
           if rule["outcome"] != "pass"}
    assert not bad, f"reference rule outcomes {bad}, but should all be 'pass'"
