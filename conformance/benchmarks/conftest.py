"""Options and the end-of-session summary of the reload benchmarks.

``--loadspec-bench-size quick|medium|full`` picks the sizes (``harness.SIZES``; default ``full``, which
reloads models of at least 1 GiB); ``--loadspec-bench-dir DIR`` is where ``summary.json``, ``summary.md``
and ``scaling.png`` go (default ``reports/benchmarks/<impl>-<device>`` for ``medium`` and ``full``,
nothing for ``quick``; ``none`` writes nothing). pytest-benchmark's own JSON is ``--benchmark-json``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadspec.conformance.benchmarks import harness, summary
from loadspec.conformance.drivers import run_device
from loadspec.conformance.plugin import adapter_of


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loadspec")
    group.addoption("--loadspec-bench-size", choices=sorted(harness.SIZES), default="full",
                    help="benchmark sizes: quick (CI, tiny), medium (CPU ratios), full (>= 1 GiB; the default)")
    group.addoption("--loadspec-bench-dir", metavar="DIR", default=None,
                    help="where summary.json/.md and scaling.png go (default reports/benchmarks/<impl>-<device> "
                         "unless --loadspec-bench-size=quick; 'none' writes nothing)")


@pytest.fixture(scope="session")
def bench_size(request) -> harness.Size:
    return harness.SIZES[request.config.getoption("--loadspec-bench-size")]


def _directory(config: pytest.Config) -> Path | None:
    option = config.getoption("--loadspec-bench-dir")
    if option == "none":
        return None
    if option:
        return Path(option)
    if config.getoption("--loadspec-bench-size") == "quick":
        return None
    adapter = adapter_of(config)
    return Path(config.rootpath) / "reports" / "benchmarks" / f"{getattr(adapter, 'report_id', adapter.name)}-" \
        f"{run_device()}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    directory = _directory(session.config)
    if directory is None or not harness.RESULTS:
        return
    adapter = adapter_of(session.config)
    document = summary.build(adapter, run_device(), session.config.getoption("--loadspec-bench-size"),
                             harness.RESULTS)
    written = summary.write(document, directory)
    session.config.stash[_WRITTEN] = written


_WRITTEN = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    written = config.stash.get(_WRITTEN, None)
    if written:
        terminalreporter.write_line("loadspec benchmarks: " + ", ".join(str(p) for p in written))
