"""LOAD-11: dtypes are never checked, only shapes; copy_ converts whatever arrives (vLLM)."""

from loadspec.reference import loaders, scales
from loadspec.reference.layers import linear
from mutants._patched import PatchedAdapter


def _any_dtype(param, loaded_weight) -> None:
    return None


class LenientDtypeAdapter(PatchedAdapter):
    name = report_id = "mutant-lenient-dtype"
    targets = ("LOAD-11",)
    suite = ("test_load.py",)
    patches = tuple((module, "check_dtype", _any_dtype) for module in (loaders, scales, linear))
