"""The plugin: implementation selection, bad input before any test runs, rule selection, xfail files, reports."""

from __future__ import annotations

import json

import pytest

from loadspec.conformance.adapter import PRIMITIVE_METHODS

pytestmark = pytest.mark.slow

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


def test_unknown_impl_is_one_line_naming_the_choices(pytester):
    result = run(pytester, "--impl=nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*loadspec: unknown implementation 'nope'; registered: *reference*vllm*"])


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


def test_capability_typo_named_with_valid_choices(pytester):
    pytester.makepyfile(typo_adapter="""
from loadspec.conformance.adapters.reference import ReferenceAdapter
class Adapter(ReferenceAdapter):
    capabilities = frozenset({"primitives", "reload_sesions"})
""")
    result = run(pytester, "--impl=typo_adapter")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown capabilities ?'reload_sesions'?; valid: *reload_sessions*"])


def test_requires_typo_in_a_test_is_a_usage_error(pytester):
    pytester.makepyfile(test_typo="""
import pytest
@pytest.mark.requires("modle")
def test_x(impl): pass
""")
    result = pytester.runpytest_subprocess("-p", "loadspec.conformance.plugin", "test_typo.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*requires unknown capabilities ?'modle'?*"])


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


def test_rule_option_selects_by_id_and_family(pytester):
    run(pytester, "--rule", "MAP").assert_outcomes(passed=1, deselected=2)
    run(pytester, "--rule", "SCALE-1", "--rule", "RELOAD").assert_outcomes(passed=2, deselected=1)
    assert run(pytester, "--rule", "NOPE-1").ret == pytest.ExitCode.USAGE_ERROR


def test_family_markers(pytester):
    run(pytester, "-m", "map or scale").assert_outcomes(passed=2, deselected=1)


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


def test_report_written_per_rule(pytester):
    report = pytester.path / "out"
    run(pytester, f"--loadspec-report={report}")
    data = json.loads((report / "conformance.json").read_text())
    outcomes = {rule["id"]: rule["outcome"] for rule in data["rules"]}
    assert outcomes["SCALE-1"] == "pass" and outcomes["RELOAD-1"] == "pass" and outcomes["KVPROC-5"] == "not run"
    assert data["implementation"]["name"] == "reference"
    assert "| SCALE-1 | MUST | pass |" in (report / "conformance.md").read_text()


def test_primitive_methods_are_the_protocols():
    from loadspec.conformance.adapter import Adapter

    assert set(PRIMITIVE_METHODS) <= set(dir(Adapter))
