"""The report: headline of a failure, per-rule attribution, and the outcome diff used by ``make test-vllm``."""

from __future__ import annotations

import json

from loadspec.conformance import report as conformance_report
from loadspec.conformance.report import RuleReport, headline, main, outcome_changes

Result = conformance_report.TestResult  # not imported by its own name: pytest would try to collect it


def test_headline_is_the_error_line():
    message = "impl = <adapter>\n    def test():\nE       AssertionError: k=1, but should be 2 [KVPROC-2]\nE   more"
    assert headline(message) == "AssertionError: k=1, but should be 2 [KVPROC-2]"
    assert headline("Skipped: needs mla") == "Skipped: needs mla"


def test_a_failure_naming_some_cited_rules_fails_only_those():
    report = RuleReport({"name": "x"})
    report.add(["KVPROC-6", "KVPROC-9"], Result("t", "fail", "E   AssertionError: ... [KVPROC-9]"))
    assert report.rules["KVPROC-9"].outcome == "fail"
    assert report.rules["KVPROC-6"].outcome == "skipped"
    assert "failed on KVPROC-9 first" in report.rules["KVPROC-6"].tests[0].message
    report.add(["LOAD-1", "LOAD-2"], Result("u", "fail", "E   RuntimeError: boom"))
    assert report.rules["LOAD-1"].outcome == report.rules["LOAD-2"].outcome == "fail"


def document(**outcomes):
    return {"rules": [{"id": rule_id, "level": "MUST", "outcome": outcome} for rule_id, outcome in outcomes.items()]}


def test_outcome_changes_lists_rules_whose_outcome_moved():
    before = document(**{"SCALE-1": "pass", "SCALE-2": "fail"})
    after = document(**{"SCALE-1": "fail", "SCALE-2": "fail", "SCALE-3": "pass"})
    assert outcome_changes(before, after) == ["SCALE-1 (MUST): pass -> fail", "SCALE-3 (MUST): absent -> pass"]
    assert outcome_changes(after, after) == []


def test_diff_command_exits_1_only_when_strict(tmp_path, capsys):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(document(**{"SCALE-1": "pass"})))
    new.write_text(json.dumps(document(**{"SCALE-1": "fail"})))
    assert main(["diff", str(old), str(new)]) == 0
    assert "SCALE-1 (MUST): pass -> fail" in capsys.readouterr().out
    assert main(["diff", str(old), str(new), "--strict"]) == 1
    assert main(["diff", str(old), str(old), "--strict"]) == 0


def test_completeness_in_json_and_markdown():
    from loadspec.conformance.rules import RULES

    report = RuleReport({"name": "x"})
    for rule in RULES[1:]:
        report.add([rule.id], Result(f"t::{rule.id}", "skipped", "needs mla"))
    data = report.as_json()
    assert data["complete"] is False and data["not_run"] == [RULES[0].id]
    assert data["incomplete_reasons"] == [f"1 of {len(RULES)} rules did not run"]
    assert f"**Partial report**: 1 of {len(RULES)} rules did not run. Not run: {RULES[0].id}." in report.as_markdown()
    report.add([RULES[0].id], Result("t::first", "pass"))
    assert report.as_json()["complete"] is True and "Complete run: every rule ran." in report.as_markdown()
    report.session_gaps = ["2 test(s) deselected (filtered run)"]  # every rule ran, but not every test
    assert report.as_json()["complete"] is False
    assert "**Partial report**: 2 test(s) deselected (filtered run)." in report.as_markdown()


def test_diff_names_a_partial_report_and_reads_old_reports_without_the_field(tmp_path, capsys):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(document(**{"SCALE-1": "pass", "SCALE-2": "pass"})))  # no "complete": an old report
    new.write_text(json.dumps({**document(**{"SCALE-1": "pass", "SCALE-2": "not run"}), "complete": False,
                               "incomplete_reasons": ["1 of 2 rules did not run"]}))
    assert main(["diff", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "SCALE-2 (MUST): pass -> not run" in out
    assert f"loadspec: {new} is a partial report: 1 of 2 rules did not run" in out and f"{old} is a partial" not in out


def test_measured_lines_reach_the_markdown_and_json():
    report = RuleReport({"name": "x"})
    report.add(["E2E-1"], Result("conformance/test_e2e.py::test_a[ct]", "pass",
                                 measured="ct on cpu: perplexity 8.1575"))
    report.add(["E2E-2"], Result("conformance/test_e2e.py::test_b", "pass"))
    markdown = report.as_markdown()
    assert "## Measured" in markdown
    assert "| E2E-1 | pass | `test_a[ct]` | ct on cpu: perplexity 8.1575 |" in markdown
    assert "test_b" not in markdown.partition("## Measured")[2]
    rules = {rule["id"]: rule for rule in report.as_json()["rules"]}
    assert rules["E2E-1"]["tests"][0]["measured"] == "ct on cpu: perplexity 8.1575"
