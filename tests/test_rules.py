"""The rule table: well-formed, every rule cited by a suite test, and docs/CONTRACT.md and the README agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loadspec.conformance.readme import COMMAND, CONTRACT_PATH, GENERATORS, block, contract_markdown
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


SUITE_MODULES = sorted((ROOT / "conformance").glob("test_*.py"))


def cited_rules(paths: list[Path]) -> dict[str, list[str]]:
    """Rule id -> node ids of the tests collected from ``paths`` that cite it."""
    collector = _CitationCollector()
    code = pytest.main([*map(str, paths), "--collect-only", "-qq", "--rootdir", str(ROOT), "--loadspec-report=none"],
                       plugins=[collector])
    assert code == 0, f"collecting {[p.name for p in paths]} failed with exit code {code}"
    return collector.cited


@pytest.fixture(scope="module")
def suite_citations() -> dict[str, list[str]]:
    assert SUITE_MODULES, "no conformance/test_*.py found"
    return cited_rules(SUITE_MODULES)


def test_every_rule_is_cited_by_a_suite_test(suite_citations):
    """Only the suite counts (conformance/test_*.py): tests/ checks the reference's internals, not the contract."""
    cited = suite_citations
    missing = [rule.id for rule in RULES if rule.id not in cited]
    assert not missing, f"rules with no test in conformance/test_*.py: {missing}"
    unknown = sorted(set(cited) - set(RULES_BY_ID))
    assert not unknown, f"conformance/test_*.py cites unknown rule ids: {unknown}"


def test_every_rule_family_has_a_suite_test(suite_citations):
    cited = suite_citations
    families = {rule.family for rule in RULES if rule.id in cited}
    assert families == set(FAMILIES), f"families with no suite test: {sorted(set(FAMILIES) - families)}"


def test_contract_doc_matches_the_rule_table():
    contract = ROOT / CONTRACT_PATH
    assert contract.exists(), f"{CONTRACT_PATH} is missing: run `{COMMAND}`"
    assert contract.read_text() == contract_markdown(), f"{CONTRACT_PATH} is stale: run `{COMMAND}`"


def test_contract_doc_holds_every_rule_once():
    text = contract_markdown()
    for rule in RULES:
        assert text.count(f"| {rule.id} |") == 1, rule.id


@pytest.mark.parametrize("name", GENERATORS)
def test_readme_generated_blocks_match_the_data(name):
    readme = (ROOT / "README.md").read_text()
    assert block(name) in readme, f"README {name} block is stale: run `{COMMAND}`"


def test_readme_no_longer_holds_the_full_rule_table():
    """The README keeps the per-family summary; the rule sentences live in docs/CONTRACT.md only."""
    readme = (ROOT / "README.md").read_text()
    restated = [rule.id for rule in RULES if rule.text in readme]
    assert not restated, f"README restates rules that belong in {CONTRACT_PATH}: {restated}"
