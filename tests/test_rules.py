"""The rule table: well-formed, every rule cited by a test, and the README agrees with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loadspec.conformance.readme import GENERATORS, block
from loadspec.conformance.rules import FAMILIES, MUST, RULES, RULES_BY_ID, SHOULD

ROOT = Path(__file__).resolve().parent.parent


def test_rule_ids_are_unique_and_well_formed():
    assert len(RULES_BY_ID) == len(RULES)
    for rule in RULES:
        assert re.fullmatch(r"[A-Z][A-Z0-9]*-\d+", rule.id), rule.id
        assert rule.family in FAMILIES, f"{rule.id}: unknown family"
        assert rule.level in (MUST, SHOULD)
        assert rule.text.endswith(".") and rule.source, rule.id
        assert bool(rule.vllm_differs) == (rule.level == SHOULD), (
            f"{rule.id}: a SHOULD rule says how vLLM differs, a MUST rule does not")


class _CitationCollector:
    def __init__(self) -> None:
        self.cited: dict[str, list[str]] = {}

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            for mark in item.iter_markers("rule"):
                for rule_id in mark.args:
                    self.cited.setdefault(rule_id, []).append(item.nodeid)


def cited_rules(directory: str) -> dict[str, list[str]]:
    collector = _CitationCollector()
    code = pytest.main([str(ROOT / directory), "--collect-only", "-qq",
                        "--rootdir", str(ROOT)], plugins=[collector])
    assert code == 0, f"collecting {directory} failed with exit code {code}"
    return collector.cited


def test_every_rule_is_cited_by_a_test():
    """Suite tests count: the meta-test runs them on the reference in CI."""
    cited = {**cited_rules("conformance"), **cited_rules("tests")}
    missing = [rule.id for rule in RULES if rule.id not in cited]
    assert not missing, f"rules with no test in tests/ or conformance/: {missing}"


def test_every_rule_family_has_a_suite_test():
    cited = cited_rules("conformance")
    families = {rule.family for rule in RULES if rule.id in cited}
    assert families == set(FAMILIES), f"families with no suite test: {sorted(set(FAMILIES) - families)}"


@pytest.mark.parametrize("name", GENERATORS)
def test_readme_generated_blocks_match_the_data(name):
    readme = (ROOT / "README.md").read_text()
    assert block(name) in readme, f"README {name} block is stale: run `python -m loadspec.conformance.readme README.md`"
