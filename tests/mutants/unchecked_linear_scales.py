"""LOAD-12: linear weight_scale/input_scale values are never validated (vLLM)."""

from loadspec.reference.layers import linear
from mutants._patched import PatchedAdapter


class UncheckedLinearScalesAdapter(PatchedAdapter):
    name = report_id = "mutant-unchecked-linear-scales"
    targets = ("LOAD-12",)
    suite = ("test_load.py",)
    patches = ((linear, "check_linear_scale", lambda loaded_weight, *, name: None),)
