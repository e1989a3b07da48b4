"""Replaying a written counterexample against an implementation and the reference.

``python replay.py [--impl NAME]`` inside a reproducer directory, or
``python -m loadspec.conformance.replay DIR [--impl NAME]`` from anywhere.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from loadspec.conformance import selection
from loadspec.conformance.assertions import state_differences
from loadspec.strategies.layouts import CheckpointLayout


def _run(adapter, spec, directory: Path, roles: list[str]) -> dict | Exception:
    try:
        model = adapter.build_model(spec, device="cpu")
        adapter.first_load(model, directory / roles[0])
        for role in roles[1:]:
            adapter.reload(model, directory / role)
        return adapter.export_kernel_state(model)
    except Exception as exc:  # noqa: BLE001 - reported, not handled
        return exc


def _outcome(result: dict | Exception) -> str:
    return f"error {type(result).__name__}: {result}" if isinstance(result, Exception) else "loaded"


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
    spec = CheckpointLayout.from_json(json.dumps(case["layouts"][roles[0]])).spec
    impl = selection.resolve(selection.chosen_name(args.impl))
    ref = selection.resolve("reference")
    got, expected = _run(impl, spec, directory, roles), _run(ref, spec, directory, roles)
    print(f"{impl.name}: {_outcome(got)}")
    print(f"reference: {_outcome(expected)}")
    if isinstance(got, Exception) or isinstance(expected, Exception):
        if isinstance(got, Exception) != isinstance(expected, Exception):
            return 1
        if isinstance(expected, ValueError) and not isinstance(got, ValueError):  # a rejection is a ValueError
            print(f"differs: the rejection: {type(got).__name__}, but should be a ValueError as the reference's")
            return 1
        return 0
    differing = state_differences(got, expected)
    for name, how in differing.items():
        print(f"differs: {name}: {how}")
    return 1 if differing else 0


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit("usage: python -m loadspec.conformance.replay REPRODUCER_DIR [--impl NAME]")
    raise SystemExit(main(Path(sys.argv[1]), sys.argv[2:]))
