"""LOAD-13: a checkpoint scale of -1.0 (or any negative) is read as "not loaded", and NaN/0 are found only
when processing runs, after the weights were written (vLLM)."""

from loadspec.reference import scales
from mutants._patched import PatchedAdapter


class SentinelInBandAdapter(PatchedAdapter):
    name = report_id = "mutant-sentinel-in-band"
    targets = ("LOAD-13",)
    suite = ("test_load.py",)
    patches = ((scales, "check_scale_value", lambda loaded_weight, *, name=None: None),)
