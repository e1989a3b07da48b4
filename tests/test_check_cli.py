"""``loadspec check``: the per-layer KV-scale table for every producer layout, problems, exit codes, --json."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loadspec.conformance.check import main
from loadspec.reference import checkpoint as reader
from loadspec.reference.checkpoint import SINGLE_FILE
from loadspec.reference.spec import DEFAULT_SPEC
from loadspec.strategies.layouts import CheckpointLayout
from loadspec.strategies.producers import PRODUCERS

VALUES = {"q": 0.125, "k": 0.5, "v": 0.25, "prob": 1.5}


def _layout(producer: str) -> CheckpointLayout:
    spec = dataclasses.replace(DEFAULT_SPEC, quant_method=PRODUCERS[producer].quant_method)
    return CheckpointLayout(spec, producer=producer, kv_scales=dict(VALUES))


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().out


@pytest.mark.parametrize("producer", sorted(PRODUCERS))
def test_every_producer_layout_loads_cleanly(producer, tmp_path, capsys):
    layout = _layout(producer)
    path = layout.write(tmp_path / producer)
    code, out = _run([str(path)], capsys)
    assert code == 0, out
    assert producer in out.splitlines()[1]
    assert "loads cleanly" in out
    for name in layout.kv_scale_names:
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " -> "))
        assert "self_attn.attn." in line and line.endswith("-> loads"), line


def _corrupt(path: Path, name: str, tensor: torch.Tensor) -> None:
    state = load_file(path / SINGLE_FILE)
    state[name] = tensor
    save_file(state, path / SINGLE_FILE)


@pytest.mark.parametrize("bad, why", [(torch.tensor([0.5, 0.5]), "more than one element (2)"),
                                      (torch.tensor(float("nan")), "non-finite"),
                                      (torch.tensor(-1.0), "sentinel"), (torch.tensor(0.0), "<= 0")])
def test_a_bad_k_scale_is_a_problem_naming_it(bad, why, tmp_path, capsys):
    path = _layout("autofp8").write(tmp_path / "ckpt")
    _corrupt(path, "model.layers.1.self_attn.k_scale", bad)
    _corrupt(path, "model.layers.0.self_attn.v_scale", torch.tensor(float("inf")))
    code, out = _run([str(path)], capsys)
    assert code == 1, out
    assert "2 problem(s)" in out  # every problem at once
    problems = out.split("problem(s):", 1)[1]
    assert "model.layers.1.self_attn.k_scale -> model.layers.1.self_attn.attn.k_scale: rejected" in problems
    assert why in problems and "model.layers.0.self_attn.v_scale" in problems


def test_a_layer_without_kv_scales_defaults_to_one_and_is_a_problem(tmp_path, capsys):
    layout = dataclasses.replace(_layout("autofp8"), missing=("model.layers.1.self_attn.k_scale",
                                                              "model.layers.1.self_attn.v_scale"))
    code, out = _run([str(layout.write(tmp_path / "ckpt"))], capsys)
    assert code == 1, out
    assert "(absent) -> model.layers.1.self_attn.attn.k_scale -> - -> defaults to 1.0" in out


def test_not_a_checkpoint_directory_exits_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    code, out = _run([str(tmp_path)], capsys)
    assert code == 2
    assert "not a readable checkpoint directory" in out and "no" in out


def test_json_parses(tmp_path, capsys):
    path = _layout("modelopt").write(tmp_path / "ckpt")
    code, out = _run([str(path), "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["exit_code"] == 0 and report["problems"] == []
    assert "modelopt" in report["producers"] and report["linear"]["input_scales"] > 0
    assert all(p.startswith("modelopt") for p in report["producers"])  # layouts with ModelOpt's names only
    loaded = {row["canonical"]: row["value"] for row in report["scales"] if row["outcome"] == "loads"}
    assert loaded["model.layers.0.self_attn.attn.k_scale"] == 0.5


def test_impl_asks_the_adapters_mapper(tmp_path, capsys):
    path = _layout("quark").write(tmp_path / "ckpt")
    code, out = _run([str(path), "--impl", "reference", "--json"], capsys)
    assert code == 0 and json.loads(out)["mapper"] == "reference cache_scale_mapper('quark')"
    code, out = _run([str(path), "--impl", "no-such-engine"], capsys)
    assert code == 2 and "no-such-engine" in out


def test_console_entry_in_a_subprocess(tmp_path):
    path = _layout("compressed-tensors").write(tmp_path / "ckpt")
    _corrupt(path, "model.layers.0.self_attn.k_scale", torch.tensor([0.5, 0.5]))
    done = subprocess.run([sys.executable, "-m", "loadspec.conformance.cli", "check", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "model.layers.0.self_attn.k_scale -> model.layers.0.self_attn.attn.k_scale" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "loadspec.conformance.cli", "check", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert bad.returncode == 2, bad.stdout + bad.stderr


def test_only_scale_tensors_are_read(tmp_path, capsys, monkeypatch):
    read: list[str] = []
    original = reader.Shard.read
    monkeypatch.setattr(reader.Shard, "read", lambda self, name: read.append(name) or original(self, name))
    code, _ = _run([str(_layout("modelopt").write(tmp_path / "ckpt"))], capsys)
    assert code == 0 and read
    assert all(name.endswith(("_scale", ".kv_scale")) for name in read), read
