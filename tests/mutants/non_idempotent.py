"""MAP-8: a cache-scale mapper without the guard that keeps mapped names fixed (vLLM #42777-style)."""

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.mapper import WeightsMapper

UNGUARDED = WeightsMapper(regex={r"\.(q|k|v|prob)_scale$": r".attn.\1_scale"})


class NonIdempotentAdapter(ReferenceAdapter):
    name = report_id = "mutant-non-idempotent"
    targets = ("MAP-8",)
    suite = ("test_map.py",)

    def cache_scale_mapper(self, quant_method):
        return super().cache_scale_mapper(quant_method) | UNGUARDED
