"""Reload benchmarks for any adapter (pytest-benchmark): ``pytest conformance/benchmarks --impl=NAME --device D``.

``python -m loadspec.conformance.benchmarks compare BASELINE NEW`` fails on a regression; see
``reports/benchmarks/README.md``.
"""
