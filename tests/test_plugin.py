"""The plugin: implementation selection, bad input before any test runs, rule selection, xfail files, reports."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import settings
from hypothesis.errors import InvalidArgument

from loadspec.conformance import plugin
from loadspec.conformance import report as conformance_report
from loadspec.conformance.adapter import PRIMITIVE_METHODS
from loadspec.conformance.rules import RULES

slow = pytest.mark.slow  # runs pytest in a subprocess
SUITE = Path(plugin.__file__).resolve().parent

SUITE_TEST = """
import pytest

@pytest.mark.rule("SCALE-1")
def test_scale(impl):
    assert impl.new_scale_parameter(device="cpu").item() == -1.0

@pytest.mark.rule("MAP-6")
def test_map(impl):
    assert impl.map_name(impl.make_mapper(), "a.b") == ("a.b", None)

@pytest.mark.rule("RELOAD-1")
@pytest.mark.requires("model")
def test_model(impl):
    pass
"""


def run(pytester, *args, env=None):
    pytester.makepyfile(test_suite=SUITE_TEST)
    for key, value in (env or {}).items():
        pytester._monkeypatch.setenv(key, value)
    return pytester.runpytest_subprocess("-p", "loadspec.conformance.plugin", "-p", "no:cacheprovider", *args)


@slow
def test_unknown_impl_is_one_line_naming_the_choices(pytester):
    result = run(pytester, "--impl=nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*loadspec: unknown implementation 'nope'; registered: *reference*vllm*"])


@slow
def test_adapter_missing_methods_named(pytester):
    pytester.makepyfile(half_adapter="""
class Adapter:
    name, version, capabilities = "half", "0", frozenset({"primitives"})
    def new_scale_parameter(self, *, device): ...
""")
    result = run(pytester, "--impl=half_adapter")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*lacks methods its capabilities require: load_scale, *"])
    assert "new_scale_parameter" not in result.stderr.str().split("require:")[1]


@slow
def test_capability_typo_named_with_valid_choices(pytester):
    pytester.makepyfile(typo_adapter="""
from loadspec.conformance.adapters.reference import ReferenceAdapter
class Adapter(ReferenceAdapter):
    capabilities = frozenset({"primitives", "reload_sesions"})
""")
    result = run(pytester, "--impl=typo_adapter")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown capabilities ?'reload_sesions'?; valid: *reload_sessions*"])


@slow
def test_requires_typo_in_a_test_is_a_usage_error(pytester):
    pytester.makepyfile(test_typo="""
import pytest
@pytest.mark.requires("modle")
def test_x(impl): pass
""")
    result = pytester.runpytest_subprocess("-p", "loadspec.conformance.plugin", "test_typo.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*requires unknown capabilities ?'modle'?*"])


@slow
def test_env_var_chooses_the_impl_and_header_names_it(pytester):
    pytester.makepyfile(primitives_only="""
from loadspec.conformance.adapters.reference import ReferenceAdapter
class Adapter(ReferenceAdapter):
    name = report_id = "prims"
    capabilities = frozenset({"primitives"})
""")
    result = run(pytester, "-rs", env={"LOADSPEC_IMPL": "primitives_only"})
    result.stdout.fnmatch_lines(["loadspec: implementation prims *; contract *", "*LOADSPEC_IMPL=primitives_only*",
                                 "*prims does not declare capability model*"])
    result.assert_outcomes(passed=2, skipped=1)


@slow
def test_rule_option_selects_by_id_and_family(pytester):
    run(pytester, "--rule", "MAP").assert_outcomes(passed=1, deselected=2)
    run(pytester, "--rule", "SCALE-1", "--rule", "RELOAD").assert_outcomes(passed=2, deselected=1)
    assert run(pytester, "--rule", "NOPE-1").ret == pytest.ExitCode.USAGE_ERROR


@slow
def test_family_markers(pytester):
    run(pytester, "-m", "map or scale").assert_outcomes(passed=2, deselected=1)


@slow
def test_xfail_file_by_rule_id_and_stale_entry_warning(pytester):
    pytester.makepyfile(test_broken="""
import pytest
@pytest.mark.rule("KVPROC-5")
def test_v_only(impl):
    raise AssertionError("v-only crashes")
""")
    xfails = pytester.path / "xfails.txt"
    xfails.write_text("# known bugs\nKVPROC-5   # vllm#46264\nconformance/test_gone.py::test_nothing\n")
    result = pytester.runpytest_subprocess("-p", "loadspec.conformance.plugin", "test_broken.py",
                                           f"--loadspec-xfails={xfails}", "-W", "default")
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(["*xfails.txt:3: 'conformance/test_gone.py::test_nothing' matches no collected test*"])


@slow
def test_report_written_per_rule(pytester):
    report = pytester.path / "out"
    result = run(pytester, f"--loadspec-report={report}")
    result.stdout.fnmatch_lines(["loadspec report: *conformance.json and *.md (partial: *rules did not run)"])
    data = json.loads((report / "conformance.json").read_text())
    outcomes = {rule["id"]: rule["outcome"] for rule in data["rules"]}
    assert outcomes["SCALE-1"] == "pass" and outcomes["RELOAD-1"] == "pass" and outcomes["KVPROC-5"] == "not run"
    assert data["implementation"]["name"] == "reference"
    markdown = (report / "conformance.md").read_text()
    assert "| SCALE-1 | MUST | pass |" in markdown
    # an explicit directory takes a partial run, marked as such
    assert data["complete"] is False and "KVPROC-5" in data["not_run"] and "SCALE-1" not in data["not_run"]
    assert data["incomplete_reasons"] == [f"{len(RULES) - 3} of {len(RULES)} rules did not run"]
    assert f"**Partial report**: {len(RULES) - 3} of {len(RULES)} rules did not run." in markdown


def test_primitive_methods_are_the_protocols():
    from loadspec.conformance.adapter import Adapter

    assert set(PRIMITIVE_METHODS) <= set(dir(Adapter))


# ------------------------------------------------- which runs write the default report directory
def make_reporter(tmp_path, option=None, suite_run=True):
    """A RuleReporter for adapter ``fake`` whose config has ``--loadspec-report=option`` and root ``tmp_path``."""
    options = {"--loadspec-report": option, "maxfail": 0}
    config = SimpleNamespace(getoption=lambda name, default=None: options.get(name, default), rootpath=tmp_path)
    adapter = SimpleNamespace(name="fake", version="0", capabilities=frozenset(), report_id="fake")
    reporter = plugin.RuleReporter(config, adapter)
    reporter.suite_run = suite_run
    return reporter


def finish(reporter, rule_ids, *, exitstatus=pytest.ExitCode.OK, shouldfail=False, deselected=0):
    """Record one passing test per rule in ``rule_ids``, then end the session as described."""
    for rule_id in rule_ids:
        reporter.report.add([rule_id], conformance_report.TestResult(f"conformance/test_x.py::{rule_id}", "pass"))
    reporter.deselected = deselected
    session = SimpleNamespace(config=reporter.config, shouldfail=shouldfail, shouldstop=False, testsfailed=0)
    reporter.pytest_sessionfinish(session, exitstatus)


ALL = [rule.id for rule in RULES]


def test_a_complete_suite_run_writes_the_default_directory(tmp_path):
    reporter = make_reporter(tmp_path)
    finish(reporter, ALL)
    data = json.loads((tmp_path / "reports" / "fake" / "conformance.json").read_text())
    assert data["complete"] is True and data["not_run"] == [] and data["incomplete_reasons"] == []
    assert data["summary"]["pass"] == len(RULES) and reporter.not_written == ""
    assert "Complete run: every rule ran." in (tmp_path / "reports" / "fake" / "conformance.md").read_text()


@pytest.mark.parametrize(("rules", "end", "reason"), [
    (ALL[1:], {}, f"1 of {len(RULES)} rules did not run"),
    (ALL, {"deselected": 3}, "3 test(s) deselected (filtered run)"),
    (ALL, {"shouldfail": "stopping after 1 failures"}, "the session stopped early (stopping after 1 failures)"),
    (ALL, {"exitstatus": pytest.ExitCode.INTERRUPTED}, "the session was interrupted (INTERRUPTED)"),
], ids=["rule-not-run", "deselected", "maxfail", "interrupted"])
def test_an_incomplete_run_leaves_the_default_directory_alone_and_says_why(tmp_path, rules, end, reason):
    reporter = make_reporter(tmp_path)
    finish(reporter, rules, **end)
    assert not (tmp_path / "reports").exists() and reporter.written is None
    assert reporter.not_written == (f"loadspec: report not written to {tmp_path / 'reports' / 'fake'}: {reason}; "
                                    "pass --loadspec-report DIR to write a partial report")


def test_an_explicit_directory_takes_a_partial_report_marked_incomplete(tmp_path):
    reporter = make_reporter(tmp_path, option=str(tmp_path / "out"))
    finish(reporter, ALL[:2], shouldfail="stopping after 1 failures")
    data = json.loads((tmp_path / "out" / "conformance.json").read_text())
    assert data["complete"] is False and data["not_run"] == ALL[2:]
    assert data["incomplete_reasons"] == [f"{len(RULES) - 2} of {len(RULES)} rules did not run",
                                          "the session stopped early (stopping after 1 failures)"]
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize(("option", "suite_run"), [("none", True), (None, False)], ids=["none", "tests-only"])
def test_no_report_and_no_message(tmp_path, option, suite_run):
    reporter = make_reporter(tmp_path, option=option, suite_run=suite_run)
    finish(reporter, ALL)
    assert list(tmp_path.iterdir()) == [] and reporter.written is None and reporter.not_written == ""


@slow
def test_a_filtered_suite_run_does_not_write_the_default_directory(pytester):
    result = pytester.runpytest_subprocess("-p", "loadspec.conformance.plugin", str(SUITE / "test_scale.py"),
                                           "--rule", "SCALE-1", f"--rootdir={pytester.path}", "-q")
    assert result.ret == pytest.ExitCode.OK
    assert not (pytester.path / "reports").exists()
    result.stdout.fnmatch_lines([f"loadspec: report not written to {pytester.path / 'reports' / 'reference'}: "
                                 f"{len(RULES) - 1} of {len(RULES)} rules did not run; * deselected (filtered run); "
                                 "pass --loadspec-report DIR to write a partial report"])


# ------------------------------------------------------------------------ Hypothesis profiles
def test_profiles_are_namespaced():
    for name in [*plugin.PROFILES, "loadspec-meta"]:
        assert name.startswith("loadspec-") and settings.get_profile(name).deadline is None
    assert settings.get_profile("loadspec-nightly").max_examples == 400
    for generic in ("nightly", "dev"):  # adopters' names: the plugin registers none ("ci", "default": Hypothesis's)
        with pytest.raises(InvalidArgument):
            settings.get_profile(generic)


ADOPTER_CONFTEST = """
from hypothesis import settings

settings.register_profile("dev", max_examples=7)
settings.load_profile("dev")
"""
PROFILE_TEST = """
from hypothesis import settings

def test_profile():
    print("profile:", settings.get_current_profile_name(), settings().max_examples)
"""


@slow
@pytest.mark.parametrize(("conftest", "args", "expected"), [
    ("", [], "profile: loadspec-ci 60"),
    ("", ["--hypothesis-profile=loadspec-nightly"], "profile: loadspec-nightly 400"),
    (ADOPTER_CONFTEST, [], "profile: dev 7"),
], ids=["default", "nightly", "adopters-own"])
def test_the_default_profile_only_when_the_user_chose_none(pytester, conftest, args, expected):
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_profile=PROFILE_TEST)
    result = pytester.runpytest_subprocess("-p", "loadspec.conformance.plugin", "-s", *args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*{expected}*"])


SEEDED_DRAW = """
import os
from hypothesis import given, strategies as st

@given(st.integers(0, 2**62))
def test_record(x):
    with open(os.environ["LOADSPEC_TEST_DRAWS"], "a") as out:
        out.write(f"{x}\\n")
"""


@slow
def test_the_meta_profile_honours_the_seed_where_ci_is_set(pytester, monkeypatch, tmp_path):
    """Hypothesis loads its derandomizing "ci" profile wherever CI is set; loadspec-meta, which the mutant meta-test
    and the engine reports run seeded, must still draw what each --hypothesis-seed says (it once inherited
    derandomize=True: seeds 0, 1 and 2 were one draw on CI, and a mutant survived all three)."""
    monkeypatch.setenv("CI", "true")
    draws = {}
    for seed in (0, 1, 0):
        path = tmp_path / f"draws-{len(draws)}.txt"
        monkeypatch.setenv("LOADSPEC_TEST_DRAWS", str(path))
        pytester.makepyfile(test_seeded=SEEDED_DRAW)
        result = pytester.runpytest_subprocess("-p", "loadspec.conformance.plugin", "--impl=reference",
                                               "--hypothesis-profile=loadspec-meta", f"--hypothesis-seed={seed}",
                                               "--loadspec-report=none", "-q")
        result.assert_outcomes(passed=1)
        draws[len(draws)] = (seed, path.read_text().split())
    (seed_a, first), (seed_b, second), (_, again) = draws.values()
    assert first != second, f"seeds {seed_a} and {seed_b} drew the same examples under CI=true"
    assert first == again, "the same seed drew different examples under CI=true"
