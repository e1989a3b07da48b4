"""Per-rule conformance reports: ``conformance.json`` and ``conformance.md``.

Outcomes per test are folded into one outcome per rule: ``fail`` if any test
citing it failed, else ``xfail`` if any was an expected failure, else ``pass`` if
any passed, else ``skipped`` (with the reasons), else ``not run``. A report says
whether it is complete (every rule ran, in a session that ran to its end) and, if
not, why; reports written before that field existed read as complete.
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loadspec.conformance.rules import CONTRACT_VERSION, RULES

OUTCOME_ORDER = ("fail", "xfail", "pass", "skipped", "not run")


_ERROR_LINE = re.compile(r"^E\s+((?:\w+\.)*\w*(?:Error|Exception|Warning)\b.*)$", re.MULTILINE)


def headline(message: str) -> str:
    """The line of a failure that says what went wrong: its first ``E   SomeError: ...`` line, else its first line."""
    found = _ERROR_LINE.search(message)
    return found.group(1) if found else message.strip().splitlines()[0] if message.strip() else ""


MEASURED_PROPERTY = "loadspec_measured"
"""A test's ``user_properties`` key for what it measured; the report shows it (``record_measured``)."""


def record_measured(request: Any, line: str) -> None:
    """Show ``line`` (what the test measured, e.g. perplexities) in the report's row for this test."""
    request.node.user_properties.append((MEASURED_PROPERTY, line))


@dataclass
class TestResult:
    """One test's outcome as the report shows it."""

    nodeid: str
    outcome: str  # pass | fail | skipped | xfail
    message: str = ""
    counterexample: str = ""
    measured: str = ""  # what the test measured (E2E: perplexities, scales compared), shown in the report


@dataclass
class RuleResult:
    """All results of the tests that cite one rule."""

    id: str
    level: str
    text: str
    vllm_differs: str
    tests: list[TestResult] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        outcomes = {t.outcome for t in self.tests}
        for outcome in OUTCOME_ORDER[:4]:
            if outcome in outcomes:
                return outcome
        return "not run"


class RuleReport:
    """Collects test outcomes by rule and writes the report files."""

    def __init__(self, implementation: dict, device: dict | None = None) -> None:
        self.implementation = implementation
        self.device = device or {"device": "cpu"}  # {"device", "gpu", "cuda"}: where the run built its models
        self.rules = {r.id: RuleResult(r.id, r.level, r.text, r.vllm_differs) for r in RULES}
        self.session_gaps: list[str] = []  # set by the plugin: deselected tests, an early stop, ...

    def add(self, rule_ids: list[str], result: TestResult) -> None:
        """Record ``result`` under each cited rule.

        A failure whose assertion message names some of the cited rules (``[KVPROC-9]``)
        fails those only; the other cited rules record the test as skipped, not reached.
        """
        named = [r for r in rule_ids if f"[{r}]" in result.message] if result.outcome == "fail" else []
        for rule_id in rule_ids:
            if named and rule_id not in named:
                self.rules[rule_id].tests.append(TestResult(
                    result.nodeid, "skipped", f"not reached: the test failed on {', '.join(named)} first"))
            else:
                self.rules[rule_id].tests.append(result)

    def not_run(self) -> list[str]:
        """The rules no test citing them reached an outcome for."""
        return [rule.id for rule in self.rules.values() if not rule.tests]

    def incomplete_reasons(self) -> list[str]:
        """Why this report is not the result of a complete run; empty when it is."""
        missing = self.not_run()
        return ([f"{len(missing)} of {len(self.rules)} rules did not run"] if missing else []) + self.session_gaps

    def summary(self) -> dict[str, int]:
        counts = {outcome: 0 for outcome in OUTCOME_ORDER}
        for rule in self.rules.values():
            counts[rule.outcome] += 1
        return counts

    def as_json(self) -> dict:
        return {
            "implementation": self.implementation,
            "contract_version": CONTRACT_VERSION,
            "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "platform": {"python": platform.python_version(), "machine": platform.machine(), **self.device},
            "summary": self.summary(),
            "complete": not self.incomplete_reasons(),
            "incomplete_reasons": self.incomplete_reasons(),
            "not_run": self.not_run(),
            "rules": [dict(asdict(rule), outcome=rule.outcome) for rule in self.rules.values()],
        }

    def as_markdown(self) -> str:
        impl = self.implementation
        lines = [f"# Conformance report: {impl.get('name')} {impl.get('version', '')}".rstrip(), "",
                 f"Contract version {CONTRACT_VERSION}. Summary: "
                 + ", ".join(f"{n} {k}" for k, n in self.summary().items() if n) + ".", "", self._completeness(), "",
                 f"Device: {self.device.get('device', 'cpu')}"
                 + (f" ({self.device['gpu']}, CUDA {self.device.get('cuda')})" if self.device.get("gpu") else "")
                 + ".", ""]
        for key in ("capabilities", "notes"):
            if impl.get(key):
                value = impl[key]
                lines.append(f"{key.capitalize()}: {', '.join(value) if isinstance(value, list) else value}")
        lines += ["", "| Rule | Level | Outcome | Tests | Detail |", "|---|---|---|---|---|"]
        for rule in self.rules.values():
            detail = "; ".join(sorted({headline(t.message)[:160] for t in rule.tests
                                       if t.outcome != "pass" and t.message}))
            lines.append(f"| {rule.id} | {rule.level} | {rule.outcome} | {len(rule.tests)} | "
                         f"{detail.replace('|', '/')} |")
        measured = [(rule, t) for rule in self.rules.values() for t in rule.tests if t.measured]
        if measured:
            lines += ["", "## Measured", "", "| Rule | Outcome | Test | Measured |", "|---|---|---|---|"]
            lines += [f"| {rule.id} | {t.outcome} | `{t.nodeid.rpartition('::')[2]}` | {t.measured.replace('|', '/')} |"
                      for rule, t in measured]
        failures = [(rule, t) for rule in self.rules.values() for t in rule.tests if t.outcome == "fail"]
        if failures:
            lines += ["", "## Failures", ""]
            for rule, test in failures:
                lines += [f"### {rule.id} ({rule.level}): `{test.nodeid}`", "", rule.text, ""]
                if rule.vllm_differs:
                    lines += [f"How vLLM differs: {rule.vllm_differs}", ""]
                lines += ["```", test.message.strip()[:4000], "```", ""]
                if test.counterexample:
                    lines += ["Counterexample:", "", "```", test.counterexample.strip()[:4000], "```", ""]
        return "\n".join(lines) + "\n"

    def _completeness(self) -> str:
        reasons = self.incomplete_reasons()
        if not reasons:
            return "Complete run: every rule ran."
        missing = self.not_run()
        return (f"**Partial report**: {'; '.join(reasons)}."
                + (f" Not run: {', '.join(missing)}." if missing else ""))

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        json_path, md_path = directory / "conformance.json", directory / "conformance.md"
        json_path.write_text(json.dumps(self.as_json(), indent=2) + "\n")
        md_path.write_text(self.as_markdown())
        return json_path, md_path


def outcome_changes(before: dict, after: dict) -> list[str]:
    """Rules whose outcome differs between two ``conformance.json`` documents: ``'ID (LEVEL): old -> new'``."""
    old = {rule["id"]: rule["outcome"] for rule in before["rules"]}
    return [f"{rule['id']} ({rule['level']}): {old.get(rule['id'], 'absent')} -> {rule['outcome']}"
            for rule in after["rules"] if old.get(rule["id"]) != rule["outcome"]]


def main(argv: list[str] | None = None) -> int:
    """``python -m loadspec.conformance.report diff OLD.json NEW.json [--strict]``: print per-rule outcome changes."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m loadspec.conformance.report")
    commands = parser.add_subparsers(dest="command", required=True)
    diff = commands.add_parser("diff", help="per-rule outcome changes between two conformance.json files")
    diff.add_argument("old", type=Path)
    diff.add_argument("new", type=Path)
    diff.add_argument("--strict", action="store_true", help="exit 1 when any outcome changed")
    args = parser.parse_args(argv)
    old, new = json.loads(args.old.read_text()), json.loads(args.new.read_text())
    changes = outcome_changes(old, new)
    print(f"loadspec: {len(changes)} rule outcome(s) differ between {args.old} and {args.new}"
          + "".join(f"\n  {change}" for change in changes))
    for path, document in ((args.old, old), (args.new, new)):
        if document.get("complete", True) is False:  # reports older than the field read as complete
            print(f"loadspec: {path} is a partial report: {'; '.join(document.get('incomplete_reasons', []))}")
    return 1 if changes and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
