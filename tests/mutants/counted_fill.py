"""COUNT-2: the copy counter also counts ``fill_`` (the other fix for #38995's uncounted scalar loads).

vLLM #38995 found scalar scale loads written with ``fill_`` invisible to the counter and switched the
loader to ``copy_`` (field bug B22); a counter "fixed" to count ``fill_`` too counts writes that are not
weight loads (initialisation, padding, zeroing).
"""

import torch

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.copy_counter import CopyCounter

_FILLS = (torch.ops.aten.fill_.Scalar, torch.ops.aten.fill_.Tensor)


class FillCountingCounter(CopyCounter):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _FILLS:
            self.copied += args[0].numel()
        return super().__torch_dispatch__(func, types, args, kwargs)


class CountedFillAdapter(ReferenceAdapter):
    name = report_id = "mutant-counted-fill"
    targets = ("COUNT-2",)
    suite = ("test_count.py",)

    def count_copies(self, fn, *args):
        with FillCountingCounter() as counter:
            fn(*args)
        return counter.copied
