"""COUNT-5: the copy counter asserts that source and destination have equal element counts (vLLM's ``CopyCounter``).

A broadcasting ``copy_`` (a ``(4,)`` row into a ``(3, 4)`` parameter) then raises ``AssertionError`` inside
the counter instead of counting the destination's elements.
"""

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.copy_counter import _COPY, CopyCounter


class AssertingCounter(CopyCounter):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _COPY:
            assert args[0].numel() == args[1].numel(), "copy_ source and destination sizes differ"
        return super().__torch_dispatch__(func, types, args, kwargs)


class AssertingCounterAdapter(ReferenceAdapter):
    name = report_id = "mutant-asserting-counter"
    targets = ("COUNT-5",)
    suite = ("test_count.py",)

    def count_copies(self, fn, *args):
        with AssertingCounter() as counter:
            fn(*args)
        return counter.copied
