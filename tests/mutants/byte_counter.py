"""COUNT-1: the copy counter adds up bytes (``nbytes``) instead of elements.

Memory-accounting code counts what a copy writes in bytes; for FP8 (one byte an element) the two agree,
so the bug hides on FP8 weights and shows on every bf16/fp16/fp32 tensor and scale.
"""

from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.copy_counter import _COPY


class ByteCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.copied = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        if func is _COPY:
            self.copied += args[0].nbytes
        return func(*args, **(kwargs or {}))


class ByteCounterAdapter(ReferenceAdapter):
    name = report_id = "mutant-byte-counter"
    targets = ("COUNT-1",)
    suite = ("test_count.py",)

    def count_copies(self, fn, *args):
        with ByteCounter() as counter:
            fn(*args)
        return counter.copied
