"""The loadspec pytest plugin: rule markers, rule-ID checks, per-rule reports.

Registered by the repository's root ``conftest.py``, or with
``-p loadspec.conformance.plugin`` for an installed package.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from loadspec.conformance.report import RuleReport, TestResult
from loadspec.conformance.rules import RULES_BY_ID


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loadspec")
    group.addoption("--loadspec-report", metavar="DIR", default=None,
                    help="write conformance.json and conformance.md per rule into DIR")


PROFILES = {
    "loadspec-ci": 25,  # the default: the whole suite in minutes on 2 CPU cores
    "nightly": 400,  # thorough: pass --hypothesis-profile=nightly
}
for _name, _examples in PROFILES.items():
    settings.register_profile(
        _name, max_examples=_examples, deadline=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.differing_executors])


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("hypothesis_profile", default=None):
        settings.load_profile("loadspec-ci")  # only when the user chose no profile
    config.addinivalue_line("markers", "rule(*ids): the contract rule(s) a test checks, e.g. rule('SCALE-3')")
    directory = config.getoption("--loadspec-report")
    if directory:
        implementation = {"name": "reference", "version": _version()}
        config.pluginmanager.register(RuleReporter(RuleReport(implementation), Path(directory)), "loadspec-report")


def _version() -> str:
    from importlib.metadata import version
    return version("loadspec")


def rule_ids(item: pytest.Item) -> list[str]:
    """The rule IDs an item cites through ``@pytest.mark.rule``."""
    return [rule_id for mark in item.iter_markers("rule") for rule_id in mark.args]


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    unknown = sorted({(item.nodeid, rid) for item in items for rid in rule_ids(item) if rid not in RULES_BY_ID})
    if unknown:
        listing = "; ".join(f"{nodeid} cites {rid!r}" for nodeid, rid in unknown)
        raise pytest.UsageError(f"unknown rule id(s): {listing}")


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # Remember each item's rules on its reports so the logreport hook can file them.
    if call.when == "setup":
        item.user_properties.append(("loadspec_rules", rule_ids(item)))


def _outcome(report: pytest.TestReport) -> str | None:
    if hasattr(report, "wasxfail"):
        return "xfail" if report.skipped else "fail"
    if report.failed:
        return "fail"
    if report.skipped:
        return "skipped"
    if report.passed and report.when == "call":
        return "pass"
    return None


class RuleReporter:
    """Files each test outcome under the rules it cites and writes the report at the end."""

    def __init__(self, report: RuleReport, directory: Path) -> None:
        self.report = report
        self.directory = directory
        self.written: tuple[Path, Path] | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        outcome = _outcome(report)
        if outcome is None:
            return
        properties = dict(report.user_properties)
        message = ""
        if outcome == "skipped" and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2])
        elif outcome != "pass":
            message = getattr(report, "wasxfail", "") or report.longreprtext
        result = TestResult(report.nodeid, outcome, message, properties.get("loadspec_counterexample", ""))
        self.report.add(properties.get("loadspec_rules", []), result)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.written = self.report.write(self.directory)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.written:
            terminalreporter.write_line(f"loadspec report: {self.written[0]} and {self.written[1]}")
