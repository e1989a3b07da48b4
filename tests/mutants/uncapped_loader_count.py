"""COUNT-3: a loader call is credited every element it copies, so a loader writing a parameter twice counts it twice.

vLLM 0.22 (prime-rl#2714, field bug B24): ``composed_weight_loader`` copies ``mixer.D`` twice, the count
reached the layer's size early and the layer was processed with garbage; fixed by capping the count per
loader call (vllm#44814).
"""

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.copy_counter import CopyCounter


class UncappedLoaderCountAdapter(ReferenceAdapter):
    name = report_id = "mutant-uncapped-loader-count"
    targets = ("COUNT-3",)
    suite = ("test_count.py",)

    def count_loader_call(self, loader, param, loaded_weight):
        with CopyCounter() as counter:
            loader(param, loaded_weight)
        return counter.copied
