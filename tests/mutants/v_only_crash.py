"""KVPROC-5: a checkpoint with only v_scale crashes processing (vLLM #46264)."""

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.vocabulary import SENTINEL


class VOnlyCrashAdapter(ReferenceAdapter):
    name = report_id = "mutant-v-only-crash"
    targets = ("KVPROC-5",)
    suite = ("test_kvproc.py",)

    def process_attention(self, layer):
        if hasattr(layer, "k_scale") and layer.k_scale.item() == SENTINEL and layer.v_scale.item() != SENTINEL:
            raise AssertionError("assert layer.k_scale > 0.0")
        super().process_attention(layer)
