"""LOAD-6: the automatic loader writes each weight as it streams, so a later rejection leaves earlier ones written."""

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.auto_loader import AutoWeightsLoader, write_planned


class StreamingLoaderAdapter(ReferenceAdapter):
    name = report_id = "mutant-streaming-loader"
    targets = ("LOAD-6",)
    suite = ("test_load.py",)

    def auto_load(self, module, weights, *, mapper=None, quant_method=None, skip_prefixes=(), skip_substrs=()):
        loader = AutoWeightsLoader(module, skip_prefixes=skip_prefixes, skip_substrs=skip_substrs)
        loaded = set()
        for weight in weights:
            planned = loader.plan([weight], mapper=mapper)
            write_planned(planned)
            loaded |= {load.name for load in planned}
        return loaded
