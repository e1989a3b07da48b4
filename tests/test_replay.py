"""The reproducer a failing suite test writes, and ``replay.py`` run on it (what a maintainer attaches to a bug).

``replay.py`` rebuilds the case with ``--impl`` and with the reference and prints where the two
kernel states differ, so its verdict must follow the implementation, not the case.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loadspec.conformance.reproducers import REPLAY, Case
from loadspec.reference.spec import DEFAULT_SPEC
from loadspec.strategies.heads import as_per_head, head_counts, head_scale_name
from loadspec.strategies.layouts import CheckpointLayout
from loadspec.strategies.static import as_static, input_scale_names

ROOT = Path(__file__).resolve().parent.parent


def write_case(directory: Path, *roles: str) -> Path:
    """A reproducer directory as ``write_reproducer`` lays it out: case.json, one checkpoint per role, replay.py."""
    layouts = {role: CheckpointLayout(DEFAULT_SPEC, producer="autofp8", seed=index, kv_scales={"k": 0.5, "v": 0.25})
               for index, role in enumerate(roles)}
    return write_layouts(directory, Case(test="conformance/test_reload.py::test_example", values={"seed": 0},
                                         layouts=layouts))


def write_layouts(directory: Path, case: Case) -> Path:
    """``case`` written as ``write_reproducer`` writes it (case.json, each layout's directory, replay.py)."""
    layouts = case.layouts
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


def suite_run(tmp_path: Path, module: str, rule: str, impl: str, *options: str) -> subprocess.CompletedProcess:
    """``pytest <module> --rule=<rule> --impl=<impl>`` on seed 0, writing its report (and reproducers) under
    ``tmp_path/report``, as a maintainer runs the suite."""
    return subprocess.run([sys.executable, "-m", "pytest", module, f"--rule={rule}", f"--impl={impl}",
                           "--hypothesis-seed=0", *options, f"--loadspec-report={tmp_path / 'report'}", "-q",
                           "-p", "no:warnings", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT / "tests"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def _written(directory: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the checkpoint directory's shards."""
    out = {}
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            out.update((name, tuple(f.get_slice(name).get_shape())) for name in f.keys())  # noqa: SIM118
    return out


@pytest.mark.slow
def test_a_static_case_replays_its_failure(tmp_path):
    """A STATIC case's directory holds every input_scale and a static config [STATIC-1], so replaying it against
    a loader that decides static activations by the method's name fails as the suite test did."""
    spec = as_static(DEFAULT_SPEC.with_(quant_method="compressed-tensors"))
    layout = CheckpointLayout(spec, producer="compressed-tensors", seed=3, kv_scales={"k": 0.5, "v": 0.25})
    directory = write_layouts(tmp_path / "case", Case(test="conformance/test_static.py::t", layouts={"base": layout}))
    assert set(input_scale_names(spec)) <= set(_written(directory / "base"))
    config = json.loads((directory / "base" / "config.json").read_text())["quantization_config"]
    assert config["config_groups"]["group_0"]["input_activations"]["dynamic"] is False
    case = json.loads((directory / "case.json").read_text())
    assert CheckpointLayout.from_json(json.dumps(case["layouts"]["base"])) == layout
    result = replay(directory, "mutants.name_decided_static:NameDecidedStaticAdapter")
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("mutant-name-decided-static: "))
    assert "error" in line and ".input_scale" in line, result.stdout
    assert "reference: loaded" in result.stdout
    assert replay(directory, "reference").returncode == 0


@pytest.mark.slow
def test_a_per_head_case_replays_its_failure(tmp_path):
    """A HEADS case's directories hold the per-head values of each role [HEADS-1] (they lived in Case.values
    only), so replaying base + reload against a loader collapsing heads to their max names each differing scale."""
    spec = as_per_head(DEFAULT_SPEC)
    counts = head_counts(spec)
    values = {role: {i: {kind: tuple(scale * (1 + h) for h in range(counts[kind])) for kind in ("q", "k", "v")}
                     for i in range(len(spec.layers))} for role, scale in (("base", 0.125), ("reload", 0.25))}
    layouts = {role: CheckpointLayout(spec, producer="compressed-tensors", kv_scales={}, head_scales=values[role])
               for role in values}
    directory = write_layouts(tmp_path / "case", Case(test="conformance/test_heads.py::t",
                                                      values={"per_head": values}, layouts=layouts))
    written = _written(directory / "reload")
    for i in range(len(spec.layers)):
        for kind in ("q", "k", "v"):
            assert written[head_scale_name(spec, i, kind)] == (counts[kind], 1, 1)
    config = json.loads((directory / "base" / "config.json").read_text())["quantization_config"]
    assert config["kv_cache_scheme"]["strategy"] == "attn_head"
    case = json.loads((directory / "case.json").read_text())
    assert CheckpointLayout.from_json(json.dumps(case["layouts"]["reload"])) == layouts["reload"]
    result = replay(directory, "mutants.heads_collapsed_to_max:HeadsCollapsedToMaxAdapter")
    assert result.returncode == 1, result.stdout + result.stderr
    differing = sorted(line.split(": ")[1] for line in result.stdout.splitlines() if line.startswith("differs: "))
    assert differing == sorted(f"{spec.attention_prefix(i)}{kind}_scale" for i in range(len(spec.layers))
                               for kind in ("q", "k", "v")), result.stdout
    assert replay(directory, "reference").returncode == 0


@pytest.mark.slow
def test_the_static_suite_test_writes_a_reproducer_that_replays_its_failure(tmp_path):
    """End to end: STATIC-1 fails for the name-decided mutant, the plugin writes the reproducer, and its replay.py
    fails the same way (before, the directory lacked the input scales the test had added)."""
    run = suite_run(tmp_path, "conformance/test_static.py", "STATIC-1",
                    "mutants.name_decided_static:NameDecidedStaticAdapter")
    assert run.returncode == 1, run.stdout + run.stderr
    directory = tmp_path / "report" / "reproducers" / "test_static_config_loads_every_input_scale"
    recorded = json.loads((directory / "case.json").read_text())["layouts"]["base"]
    spec = CheckpointLayout.from_json(json.dumps(recorded)).spec
    assert set(input_scale_names(spec)) <= set(_written(directory / "base"))
    result = replay(directory, "mutants.name_decided_static:NameDecidedStaticAdapter")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "mutant-name-decided-static: error" in result.stdout and "reference: loaded" in result.stdout


@pytest.mark.slow
def test_a_rejected_per_head_case_replays_its_acceptance(tmp_path):
    """A HEADS-2 case replaces one per-head scale by a wrong shape (``replaced``): the directory holds it, so the
    reference's rejection and a broadcasting loader's acceptance both replay (the bad tensor lived in the test)."""
    spec = as_per_head(DEFAULT_SPEC)
    counts = head_counts(spec)
    values = {i: {kind: (0.5,) * counts[kind] for kind in ("q", "k", "v")} for i in range(len(spec.layers))}
    name = head_scale_name(spec, 1, "k")
    layout = CheckpointLayout(spec, producer="compressed-tensors", kv_scales={}, head_scales=values,
                              replaced=((name, (1,), (0.75,)),))
    directory = write_layouts(tmp_path / "case", Case(test="conformance/test_heads.py::t", layouts={"base": layout}))
    assert _written(directory / "base")[name] == (1,)
    case = json.loads((directory / "case.json").read_text())
    assert CheckpointLayout.from_json(json.dumps(case["layouts"]["base"])) == layout
    result = replay(directory, "mutants.broadcast_head_scale:BroadcastHeadScaleAdapter")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "mutant-broadcast-head-scale: loaded" in result.stdout
    rejected = next(line for line in result.stdout.splitlines() if line.startswith("reference: "))
    assert rejected.startswith("reference: error") and name in rejected and "(1,)" in rejected, result.stdout


@pytest.mark.slow
def test_the_linear_scale_dtype_test_writes_a_reproducer_that_replays_its_failure(tmp_path):
    """DTYPE-2 stores every linear scale in a drawn dtype: the reproducer records it (``linear_scale_dtype``), the
    directory holds the scales in that dtype and the static input scales the test added, and its replay.py fails
    for a loader that keeps them in the model's dtype (before, case.json held the layout as drawn: the producer's
    scale dtypes and, where the test had made the spec static, a spec without input scales)."""
    run = suite_run(tmp_path, "conformance/test_dtype.py", "DTYPE-2",
                    "mutants.model_dtype_linear_scales:ModelDtypeLinearScalesAdapter",
                    "--hypothesis-profile=loadspec-meta")
    assert run.returncode == 1, run.stdout + run.stderr
    directory = (tmp_path / "report" / "reproducers"
                 / "test_linear_scales_load_as_float32_whatever_they_are_stored_in")
    recorded = json.loads((directory / "case.json").read_text())["layouts"]["base"]
    layout = CheckpointLayout.from_json(json.dumps(recorded))
    assert layout.linear_scale_dtype in ("float32", "bfloat16", "float16"), layout
    written = {}
    for path in (directory / "base").glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            written.update((name, f.get_tensor(name).dtype) for name in f.keys())  # noqa: SIM118
    linear = {name: dtype for name, dtype in written.items() if name.endswith((".weight_scale", ".input_scale"))}
    assert linear and set(linear.values()) == {getattr(torch, layout.linear_scale_dtype)}, linear
    if layout.spec.static_input_scales:
        assert set(input_scale_names(layout.spec)) <= set(written)
    result = replay(directory, "mutants.model_dtype_linear_scales:ModelDtypeLinearScalesAdapter")
    assert result.returncode == 1 and "differs: " in result.stdout, result.stdout + result.stderr
    assert replay(directory, "reference").returncode == 0
