"""The suite kills every mutant on the rule it breaks, and passes the reference on every rule.

Each mutant wraps the reference adapter with one bug and names the rules it
breaks (``targets``). The suite runs in a subprocess per mutant (its family's
module only, fixed Hypothesis seed) and the per-rule report is read back.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTEST = Path(sys.executable).with_name("pytest")

MUTANTS = {
    "mutants.scalar_fill:ScalarFillAdapter": "test_scale.py",
    "mutants.first_element:FirstElementAdapter": "test_scale.py",
    "mutants.v_only_crash:VOnlyCrashAdapter": "test_kvproc.py",
    "mutants.stale_mirror:StaleMirrorAdapter": "test_kvproc.py",
    "mutants.left_wins:LeftWinsAdapter": "test_map.py",
    "mutants.non_idempotent:NonIdempotentAdapter": "test_map.py",
    "mutants.missing_modelopt:MissingModelOptAdapter": "test_names.py",
    "mutants.streaming_loader:StreamingLoaderAdapter": "test_load.py",
    "mutants.lenient_dtype:LenientDtypeAdapter": "test_load.py",
    "mutants.unchecked_linear_scales:UncheckedLinearScalesAdapter": "test_load.py",
    "mutants.sentinel_in_band:SentinelInBandAdapter": "test_load.py",
    "mutants.last_source_wins:LastSourceWinsAdapter": "test_load.py",
    "mutants.loadable_output_buffers:LoadableOutputBuffersAdapter": "test_load.py",
    "mutants.naive_count:NaiveCountAdapter": "test_count.py",
    "mutants.registration_order:RegistrationOrderAdapter": "test_order.py",
    "mutants.reallocating_reload:ReallocatingAdapter": "test_reload.py",
    "mutants.garbage_partial:GarbagePartialAdapter": "test_reload.py",
    "mutants.streaming_reload:StreamingReloadAdapter": "test_reload.py",
    "mutants.abandoned_meta:AbandonedMetaAdapter": "test_reload.py",
    "mutants.divided_scales:DividedScalesAdapter": "test_e2e.py",
}


def run_suite(impl: str, report_dir: Path, *paths: str) -> dict[str, str]:
    """Run the suite (``paths`` under ``conformance/``, default all of it) on ``impl``; return each rule's outcome."""
    path = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    suite = [str(ROOT / "conformance" / p) for p in paths] or [str(ROOT / "conformance")]  # never testpaths
    command = [str(PYTEST), *suite, f"--impl={impl}",
               f"--loadspec-report={report_dir}", "--hypothesis-seed=0",
               "--hypothesis-profile=loadspec-meta", "-q", "-p", "no:warnings"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    report = report_dir / "conformance.json"
    assert report.exists(), f"no report from {' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return {rule["id"]: rule["outcome"] for rule in json.loads(report.read_text())["rules"]}


def targets_of(target: str) -> tuple[str, ...]:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute).targets


@pytest.mark.slow
@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.split(":")[0].split(".")[1])
def test_suite_kills_the_mutant_on_its_rule(mutant, tmp_path):
    outcomes = run_suite(mutant, tmp_path, MUTANTS[mutant])
    survived = {rule: outcomes[rule] for rule in targets_of(mutant) if outcomes[rule] != "fail"}
    assert not survived, f"mutant {mutant} survived: rule outcomes {survived}, but should be 'fail'"


@pytest.mark.slow
def test_every_rule_family_has_a_mutant():
    from loadspec.conformance.rules import FAMILIES, RULES_BY_ID

    killed = {RULES_BY_ID[rule].family for mutant in MUTANTS for rule in targets_of(mutant)}
    missing = set(FAMILIES) - killed
    assert not missing, f"rule families without a mutant: {sorted(missing)}"


@pytest.mark.slow
def test_reference_passes_every_rule(tmp_path):
    outcomes = run_suite("reference", tmp_path)
    bad = {rule: outcome for rule, outcome in outcomes.items() if outcome not in ("pass",)}
    assert not bad, f"reference rule outcomes {bad}, but should all be 'pass'"
