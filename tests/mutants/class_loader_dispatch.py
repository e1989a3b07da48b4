"""SCALE-7: loading dispatches to the scale class's ``weight_loader``, so a loader assigned on the instance is ignored.

vLLM's layerwise reload and weight-loader wrappers assign a loader per instance (#43167's
``KVCacheScaleParameter`` docstring); a dispatcher that looks the loader up on the class
(``type(param).weight_loader``) bypasses them.
"""

from loadspec.conformance.adapters.reference import ReferenceAdapter


class ClassLoaderDispatchAdapter(ReferenceAdapter):
    name = report_id = "mutant-class-loader-dispatch"
    targets = ("SCALE-7",)
    suite = ("test_scale.py",)

    def load_scale(self, param, weight):
        type(param).weight_loader(param, weight)
