"""The reproducer a failing suite test writes, and ``replay.py`` run on it (what a maintainer attaches to a bug).

``replay.py`` rebuilds the case with ``--impl`` and with the reference and prints where the two
kernel states differ, so its verdict must follow the implementation, not the case.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadspec.conformance.reproducers import REPLAY, Case
from loadspec.reference.spec import DEFAULT_SPEC
from loadspec.strategies.layouts import CheckpointLayout

ROOT = Path(__file__).resolve().parent.parent


def write_case(directory: Path, *roles: str) -> Path:
    """A reproducer directory as ``write_reproducer`` lays it out: case.json, one checkpoint per role, replay.py."""
    layouts = {role: CheckpointLayout(DEFAULT_SPEC, producer="autofp8", seed=index, kv_scales={"k": 0.5, "v": 0.25})
               for index, role in enumerate(roles)}
    case = Case(test="conformance/test_reload.py::test_example", values={"seed": 0}, layouts=layouts)
    directory.mkdir(parents=True)
    (directory / "case.json").write_text(case.to_json() + "\n")
    for role, layout in layouts.items():
        layout.write(directory / role)
    (directory / "replay.py").write_text(REPLAY)
    return directory


def replay(directory: Path, impl: str) -> subprocess.CompletedProcess:
    """Run the reproducer's ``replay.py`` as a maintainer would (the mutants importable from tests/)."""
    return subprocess.run([sys.executable, str(directory / "replay.py"), f"--impl={impl}"], cwd=directory,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT / "tests"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_replay_of_the_reference_finds_no_difference(tmp_path):
    result = replay(write_case(tmp_path / "case", "base", "reload"), "reference")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reference: loaded" in result.stdout and "differs:" not in result.stdout


@pytest.mark.slow
def test_replay_of_a_mutant_names_each_differing_tensor(tmp_path):
    """A mutant dividing every k/v scale by 16 differs from the reference on exactly those tensors, values shown."""
    result = replay(write_case(tmp_path / "case", "base", "reload"), "mutants.divided_scales:DividedScalesAdapter")
    assert result.returncode == 1, result.stdout + result.stderr
    differing = sorted(line.split(": ")[1] for line in result.stdout.splitlines() if line.startswith("differs: "))
    expected = sorted(f"{DEFAULT_SPEC.attention_prefix(i)}{kind}" for i in range(len(DEFAULT_SPEC.layers))
                      for kind in ("k_scale", "v_scale"))
    assert differing == expected, result.stdout
    assert "values differing by up to" in result.stdout


@pytest.mark.slow
def test_replay_of_a_case_without_checkpoints_prints_its_values(tmp_path):
    directory = tmp_path / "case"
    directory.mkdir()
    (directory / "case.json").write_text(Case(test="t", values={"shape": [2]}).to_json())
    (directory / "replay.py").write_text(REPLAY)
    result = replay(directory, "reference")
    assert result.returncode == 0 and '"shape": [2]' in result.stdout and "no checkpoint" in result.stdout


@pytest.mark.slow
def test_replay_as_a_module_takes_the_directory(tmp_path):
    directory = write_case(tmp_path / "case", "base")
    result = subprocess.run([sys.executable, "-m", "loadspec.conformance.replay", str(directory)], capture_output=True,
                            text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and "reference: loaded" in result.stdout, result.stdout + result.stderr
    usage = subprocess.run([sys.executable, "-m", "loadspec.conformance.replay"], capture_output=True, text=True)
    assert usage.returncode != 0 and "usage:" in usage.stderr
