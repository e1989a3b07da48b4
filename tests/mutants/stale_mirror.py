"""KVPROC-11: the host mirror ``_prob_scale_float`` is never refreshed (vLLM at fe4c5dcd4)."""

from loadspec.conformance.adapters.reference import ReferenceAdapter


class StaleMirrorAdapter(ReferenceAdapter):
    name = report_id = "mutant-stale-mirror"
    targets = ("KVPROC-11",)
    suite = ("test_kvproc.py",)

    def process_attention(self, layer):
        stale = layer._prob_scale_float
        super().process_attention(layer)
        layer._prob_scale_float = stale
