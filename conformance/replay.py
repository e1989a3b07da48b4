"""Replaying a written counterexample against an implementation and the reference."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from loadspec.conformance import selection
from loadspec.conformance.assertions import tensor_bytes


def _run(adapter, spec, directory: Path, roles: list[str]) -> dict | str:
    try:
        model = adapter.build_model(spec, device="cpu")
        adapter.first_load(model, directory / roles[0])
        for role in roles[1:]:
            adapter.reload(model, directory / role)
        return adapter.export_kernel_state(model)
    except Exception as exc:  # noqa: BLE001 - reported, not handled
        return f"{type(exc).__name__}: {exc}"


def main(directory: Path, argv: list[str]) -> int:
    """Rebuild the case's model with ``--impl`` and the reference; print where the two differ."""
    parser = argparse.ArgumentParser(description="replay a loadspec counterexample")
    parser.add_argument("--impl", default=None, help="implementation (default: $LOADSPEC_IMPL, else reference)")
    args = parser.parse_args(argv)
    case = json.loads((directory / "case.json").read_text())
    print(f"test: {case['test']}\nvalues: {json.dumps(case['values'], sort_keys=True)}")
    roles = [role for role in ("base", "reload", "second") if role in case["layouts"]]
    if not roles:
        print("this case has no checkpoint; the values above are the whole counterexample")
        return 0
    from loadspec.strategies.layouts import CheckpointLayout

    spec = CheckpointLayout.from_json(json.dumps(case["layouts"][roles[0]])).spec
    impl = selection.resolve(selection.chosen_name(args.impl))
    ref = selection.resolve("reference")
    got, expected = _run(impl, spec, directory, roles), _run(ref, spec, directory, roles)
    print(f"{impl.name}: {'error ' + got if isinstance(got, str) else 'loaded'}")
    print(f"reference: {'error ' + expected if isinstance(expected, str) else 'loaded'}")
    if isinstance(got, str) or isinstance(expected, str):
        return 1 if isinstance(got, str) != isinstance(expected, str) else 0
    differing = []
    for name in sorted(set(got) | set(expected)):
        a, b = got.get(name), expected.get(name)
        if a is None or b is None or a.shape != b.shape or not torch.equal(tensor_bytes(a), tensor_bytes(b)):
            differing.append(name)
    for name in differing:
        print(f"differs: {name}")
    return 1 if differing else 0
