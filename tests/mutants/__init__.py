"""Deliberately broken implementations: each wraps the reference adapter with exactly one bug.

``tests/test_mutants.py`` runs the conformance suite on each and checks that the
rule it breaks fails (and that the reference passes everything).
"""
