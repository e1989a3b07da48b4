"""The loadspec pytest plugin: ``--impl``, rule markers, capability skips, xfail files, reports.

Registered by the repository's root ``conftest.py``, or with
``-p loadspec.conformance.plugin`` for an installed package (pytest cannot add
options from a conftest inside an installed package under ``--pyargs``: pytest
#1596, #9739, #13094).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

from loadspec.conformance import drivers, selection
from loadspec.conformance.adapter import CAPABILITIES
from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.conformance.report import MEASURED_PROPERTY, RuleReport, TestResult
from loadspec.conformance.reproducers import write_reproducer
from loadspec.conformance.rules import CONTRACT_VERSION, FAMILIES, RULES_BY_ID

# Hypothesis profiles are global: every name is namespaced so none collides with an adopter's own.
PROFILES = {
    "loadspec-ci": 60,  # the default: the whole suite in well under a minute on 2 CPU cores
    "loadspec-nightly": 400,  # thorough: pass --hypothesis-profile=loadspec-nightly
}
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.differing_executors,
          HealthCheck.function_scoped_fixture]
for _name, _examples in PROFILES.items():
    settings.register_profile(_name, max_examples=_examples, deadline=None, print_blob=True,
                              suppress_health_check=_QUIET)
# For the mutant meta-test and the engine reports: finding a failure is enough, shrinking it is not needed. Seeded
# runs must draw what their seed says everywhere: a profile inherits the one loaded when it is registered, and
# Hypothesis loads its "ci" profile (derandomize=True, which ignores --hypothesis-seed) wherever the environment has
# CI set, so on a CI machine seeds 0, 1 and 2 were one and the same derandomized draw.
settings.register_profile("loadspec-meta", max_examples=PROFILES["loadspec-ci"], deadline=None, database=None,
                          derandomize=False, phases=[Phase.explicit, Phase.generate], suppress_health_check=_QUIET)

_ADAPTER = pytest.StashKey[object]()
DEVICE_ENV_VAR = "LOADSPEC_DEVICE"
DEVICES = ("cpu", "cuda")
_SUITE_DIR = Path(__file__).resolve().parent
_BENCHMARKS_DIR = _SUITE_DIR / "benchmarks"  # not the suite: collected only when named (pytest conformance/benchmarks)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loadspec")
    group.addoption("--impl", metavar="NAME_OR_MODULE", default=None,
                    help=f"implementation under test: a registered name, a module or module:attribute "
                         f"(default: ${selection.ENV_VAR}, else 'reference')")
    group.addoption("--device", metavar="cpu|cuda", default=None,
                    help=f"where every suite test builds its layers and models (default: ${DEVICE_ENV_VAR}, else "
                         f"'cpu'); cuda needs a CUDA GPU and the adapter's 'cuda' capability")
    group.addoption("--rule", metavar="ID_OR_FAMILY", action="append", default=[],
                    help="run only tests citing these rules (e.g. --rule SCALE-3 --rule RELOAD); repeatable")
    group.addoption("--checkpoint", metavar="PATH_OR_HUB_ID", default=None,
                    help="also run the E2E rules on this FP8-KV checkpoint (a directory, or a Hub id resolved from "
                         "the local cache when offline); default: $LOADSPEC_CHECKPOINT")
    group.addoption("--loadspec-report", metavar="DIR", default=None,
                    help="where to write conformance.json/.md, marked partial unless every rule ran (default "
                         "for suite runs: reports/<report_id>, written only when every rule ran; 'none' writes "
                         "nothing)")
    group.addoption("--loadspec-xfails", metavar="FILE", action="append", default=[],
                    help="file of test ids or rule ids to mark as expected failures (one per line, # comments)")
    group.addoption("--loadspec-skips", metavar="FILE", action="append", default=[],
                    help="file of test ids or rule ids to skip (one per line, # comments)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "rule(*ids): the contract rule(s) a test checks, e.g. rule('SCALE-3')")
    config.addinivalue_line("markers", "requires(*capabilities): adapter capabilities the test needs")
    for family, title in FAMILIES.items():
        config.addinivalue_line("markers",
                                f"{family.lower()}: tests of the {family} rules ({title}); added automatically")
    if not _profile_chosen(config):
        settings.load_profile("loadspec-ci")
    try:
        adapter = selection.resolve(selection.chosen_name(config.getoption("--impl")))
    except selection.AdapterSelectionError as exc:
        raise pytest.UsageError(f"loadspec: {exc}") from None
    config.stash[_ADAPTER] = adapter
    drivers.set_run_device(chosen_device(config, adapter))
    config.pluginmanager.register(RuleReporter(config, adapter), "loadspec-report")


def chosen_device(config: pytest.Config, adapter) -> str:
    """``--device``, else ``$LOADSPEC_DEVICE``, else ``cpu``; a usage error when it cannot run here."""
    device = config.getoption("--device") or os.environ.get(DEVICE_ENV_VAR) or "cpu"
    source = "--device" if config.getoption("--device") else f"${DEVICE_ENV_VAR}"
    if device not in DEVICES:
        raise pytest.UsageError(f"loadspec: {source}={device!r}: not a device; choose one of {', '.join(DEVICES)}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise pytest.UsageError(f"loadspec: {source}=cuda: no CUDA device on this machine "
                                    f"(torch {torch.__version__}: torch.cuda.is_available() is False)")
        if "cuda" not in adapter.capabilities:
            raise pytest.UsageError(f"loadspec: {source}=cuda: {adapter.name} does not declare capability 'cuda'")
    return device


def device_description(device: str) -> dict[str, str]:
    """The device a run builds on, for report headers: ``{"device": ..., "gpu": ...}`` (gpu only on CUDA)."""
    if device != "cuda":
        return {"device": device}
    return {"device": device, "gpu": torch.cuda.get_device_name(), "cuda": str(torch.version.cuda)}


def _profile_chosen(config: pytest.Config) -> bool:
    """Whether the user chose a Hypothesis profile: ``--hypothesis-profile``, or one their conftest loaded.

    Hypothesis's built-ins do not count: it loads ``ci`` by itself when ``$CI`` is set.
    """
    current = getattr(settings, "get_current_profile_name", lambda: settings._current_profile)()
    return bool(config.getoption("hypothesis_profile", default=None)) or current not in (None, "default", "ci")


def adapter_of(config: pytest.Config):
    """The implementation under test chosen for this run."""
    return config.stash[_ADAPTER]


def pytest_report_header(config: pytest.Config) -> list[str]:
    adapter = adapter_of(config)
    caps = ", ".join(sorted(adapter.capabilities))
    env = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("LOADSPEC")]
    where = device_description(drivers.run_device())
    device = where["device"] + (f" ({where['gpu']}, CUDA {where['cuda']})" if "gpu" in where else "")
    return [f"loadspec: implementation {adapter.name} {adapter.version}; contract {CONTRACT_VERSION}",
            f"loadspec: capabilities: {caps}", f"loadspec: device: {device}"] + \
        ([f"loadspec: env: {' '.join(env)}"] if env else [])


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def impl(request):
    """The implementation under test."""
    return adapter_of(request.config)


@pytest.fixture(scope="session")
def ref():
    """The reference implementation: the oracle."""
    return ReferenceAdapter()


@pytest.fixture(scope="session")
def device() -> str:
    """The device this run builds every layer and model on (``--device``); drivers' helpers default to it."""
    return drivers.run_device()


def _in_suite(item) -> bool:
    parents = Path(str(item.path)).resolve().parents
    return _SUITE_DIR in parents and _BENCHMARKS_DIR not in parents


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``pytest conformance`` runs the suite without the benchmarks; ``pytest conformance/benchmarks`` runs them."""
    if collection_path.resolve() != _BENCHMARKS_DIR:
        return None
    named = [Path(str(arg).split("::", 1)[0]).resolve() for arg in config.args]
    return not any(path == _BENCHMARKS_DIR or _BENCHMARKS_DIR in path.parents for path in named) or None


# ---------------------------------------------------------------- collection
def rule_ids(item: pytest.Item) -> list[str]:
    """The rule IDs an item cites through ``@pytest.mark.rule``."""
    return [rule_id for mark in item.iter_markers("rule") for rule_id in mark.args]


def _read_entries(paths: list[str]) -> list[tuple[str, str]]:
    entries = []
    for path in paths:
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            entry = line.split("#", 1)[0].strip()
            if entry:
                entries.append((entry, f"{path}:{number}"))
    return entries


def _matches(entry: str, item: pytest.Item) -> bool:
    if entry in RULES_BY_ID:
        return entry in rule_ids(item)
    nodeid = item.nodeid
    return nodeid == entry or nodeid.startswith(entry + "::") or nodeid.startswith(entry + "[") or \
        nodeid.split("::", 1)[0].endswith(entry)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    unknown = sorted({(item.nodeid, rid) for item in items for rid in rule_ids(item) if rid not in RULES_BY_ID})
    if unknown:
        raise pytest.UsageError("unknown rule id(s): " + "; ".join(f"{n} cites {r!r}" for n, r in unknown))
    for item in items:
        for family in {RULES_BY_ID[rid].family for rid in rule_ids(item)}:
            item.add_marker(family.lower())
    _select_rules(config, items)
    adapter = adapter_of(config)
    for item in items:
        needs = [cap for mark in item.iter_markers("requires") for cap in mark.args]
        typos = [cap for cap in needs if cap not in CAPABILITIES]
        if typos:
            raise pytest.UsageError(f"{item.nodeid} requires unknown capabilities {typos}")
        lacking = [cap for cap in needs if cap not in adapter.capabilities]
        if lacking:
            item.add_marker(pytest.mark.skip(reason=f"{adapter.name} does not declare capability "
                                                    f"{', '.join(lacking)}"))
    for option, make_mark in (("--loadspec-skips", lambda where: pytest.mark.skip(reason=f"listed in {where}")),
                              ("--loadspec-xfails", lambda where: pytest.mark.xfail(
                                  reason=f"known failure listed in {where}", strict=False))):
        for entry, where in _read_entries(config.getoption(option)):
            matched = [item for item in items if _matches(entry, item)]
            if not matched:
                warnings.warn(f"{where}: {entry!r} matches no collected test", pytest.PytestWarning, stacklevel=1)
            for item in matched:
                item.add_marker(make_mark(where))


def _select_rules(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.getoption("--rule")
    if not wanted:
        return
    unknown = [w for w in wanted if w not in RULES_BY_ID and w not in FAMILIES]
    if unknown:
        raise pytest.UsageError(f"--rule {', '.join(unknown)}: not a rule id or family; families: "
                                f"{', '.join(FAMILIES)}")
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        cited = rule_ids(item)
        hit = any(rid in wanted or RULES_BY_ID[rid].family in wanted for rid in cited)
        (keep if hit else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# ------------------------------------------------------------------- reports
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    if call.when == "setup":
        item.user_properties.append(("loadspec_rules", rule_ids(item)))
    if call.when == "call" and call.excinfo is not None and hasattr(item, "loadspec_case"):
        directory = write_reproducer(item, item.config)
        if directory is not None:
            item.user_properties.append(("loadspec_counterexample", f"reproducer: {directory}\n"
                                         f"{item.loadspec_case.summary()}"))


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


def session_gaps(session: pytest.Session, exitstatus: int, deselected: int, collection_errors: int) -> list[str]:
    """Why a session's outcomes are not the whole suite's, apart from rules that did not run."""
    gaps = [f"{deselected} test(s) deselected (filtered run)"] if deselected else []
    gaps += [f"{collection_errors} collection error(s)"] if collection_errors else []
    maxfail = session.config.getoption("maxfail", 0)
    if exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR):
        gaps.append(f"the session was interrupted ({pytest.ExitCode(exitstatus).name})")
    elif session.shouldfail or session.shouldstop or (maxfail and session.testsfailed >= maxfail):
        gaps.append(f"the session stopped early ({session.shouldfail or session.shouldstop or '--maxfail'})")
    return gaps


class RuleReporter:
    """Files each test outcome under the rules it cites and writes the report at the end of a suite run.

    The default directory (``reports/<report_id>``, ``reports/<report_id>-cuda`` for ``--device cuda``;
    committed for the reference and vLLM) is
    written only by a complete run; ``--loadspec-report DIR`` writes any run, marked partial.
    """

    def __init__(self, config: pytest.Config, adapter) -> None:
        self.config = config
        implementation = {"name": adapter.name, "version": adapter.version,
                          "capabilities": sorted(adapter.capabilities), "notes": getattr(adapter, "notes", "")}
        self.report = RuleReport(implementation, device_description(drivers.run_device()))
        self.report_id = getattr(adapter, "report_id", adapter.name)
        if drivers.run_device() != "cpu":  # reports/reference-cuda: a CUDA run never overwrites the CPU report
            self.report_id += f"-{drivers.run_device()}"
        self.suite_run = False
        self.deselected = self.collection_errors = 0
        self.written: tuple[Path, Path] | None = None
        self.not_written = ""

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self.collection_errors += int(report.failed)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.suite_run = any(_in_suite(item) for item in session.items)

    def directory(self) -> Path | None:
        """Where this run's report and reproducers go; None when it writes none."""
        option = self.config.getoption("--loadspec-report")
        if option == "none":
            return None
        if option:
            return Path(option)
        return Path(self.config.rootpath) / "reports" / self.report_id if self.suite_run else None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        outcome = _outcome(report)
        if outcome is None:
            return
        properties: dict[str, Any] = dict(report.user_properties)
        message = ""
        if outcome == "skipped" and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2])
        elif outcome != "pass":
            message = getattr(report, "wasxfail", "") or report.longreprtext
        result = TestResult(report.nodeid, outcome, message, properties.get("loadspec_counterexample", ""),
                            properties.get(MEASURED_PROPERTY, ""))
        self.report.add(properties.get("loadspec_rules", []), result)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        directory = self.directory()
        if directory is None:
            return
        self.report.session_gaps = session_gaps(session, exitstatus, self.deselected, self.collection_errors)
        reasons = self.report.incomplete_reasons()
        if reasons and not self.config.getoption("--loadspec-report"):
            self.not_written = (f"loadspec: report not written to {directory}: {'; '.join(reasons)}; "
                                f"pass --loadspec-report DIR to write a partial report")
        else:
            self.written = self.report.write(directory)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.written:
            reasons = self.report.incomplete_reasons()
            terminalreporter.write_line(f"loadspec report: {self.written[0]} and {self.written[1]}"
                                        + (f" (partial: {'; '.join(reasons)})" if reasons else ""))
        elif self.not_written:
            terminalreporter.write_line(self.not_written)
