"""STATIC-3: an input_scale the checkpoint lacks is never required (vLLM: created at float32's minimum, unchecked)."""

from loadspec.reference import api
from loadspec.reference.scales import is_scale_parameter
from mutants._patched import PatchedAdapter


def _optional_input_scales(param) -> bool:
    return is_scale_parameter(param) or getattr(param, "loadspec_name", "").endswith(".input_scale")


class UnrequiredInputScaleAdapter(PatchedAdapter):
    name = report_id = "mutant-unrequired-input-scale"
    targets = ("STATIC-3",)
    suite = ("test_static.py",)
    patches = ((api, "is_scale_parameter", _optional_input_scales),)
