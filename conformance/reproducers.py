"""Counterexamples an engine maintainer can attach to a bug report.

A test records the case it is checking with ``record_case``; Hypothesis runs
the shrunk failing example last, so the recorded case is the minimal one. On
failure the plugin writes ``reports/<impl>/reproducers/<test>/``: ``case.json``
(the drawn spec, layouts and values), each layout's checkpoint directory, and
``replay.py``.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

REPLAY = '''"""Replay this loadspec counterexample: python replay.py [--impl NAME]."""
import sys
from pathlib import Path

from loadspec.conformance.replay import main

sys.exit(main(Path(__file__).parent, sys.argv[1:]))
'''


@dataclass
class Case:
    """What one example of a test checked: values, and checkpoint layouts by role (``base``, ``reload``)."""

    test: str
    values: dict = field(default_factory=dict)
    layouts: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line per layout plus the values, for reports."""
        lines = [f"{role}: {layout.summary()}" for role, layout in self.layouts.items()]
        if self.values:
            lines.append("values: " + json.dumps(self.values, default=str, sort_keys=True))
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"test": self.test, "values": self.values,
                           "layouts": {role: json.loads(layout.to_json()) for role, layout in self.layouts.items()}},
                          indent=2, default=str, sort_keys=True)


def record_case(request, case: Case) -> Case:
    """Remember ``case`` as the example the current test is checking."""
    request.node.loadspec_case = case
    return case


def write_reproducer(item, config) -> Path | None:
    """Write the item's last recorded case under the report directory; return where."""
    reporter = config.pluginmanager.get_plugin("loadspec-report")
    base = reporter.directory() if reporter is not None else None
    if base is None:
        return None
    directory = base / "reproducers" / re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid.split("::", 1)[-1])[:120]
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    case: Case = item.loadspec_case
    (directory / "case.json").write_text(case.to_json() + "\n")
    for role, layout in case.layouts.items():
        layout.write(directory / role)
    (directory / "replay.py").write_text(REPLAY)
    return directory
