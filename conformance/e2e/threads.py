"""Torch CPU threads during an E2E run.

CPU runs use one torch thread unless ``$LOADSPEC_E2E_THREADS`` says otherwise: on shared
cores torch's spinning intra-op threads made the same check six to eight times slower.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

THREADS_ENV = "LOADSPEC_E2E_THREADS"  # torch CPU threads during a CPU run; default 1, 0 leaves torch's setting


@contextlib.contextmanager
def cpu_threads(device: str = "cpu") -> Iterator[None]:
    """Run a CPU run with ``$LOADSPEC_E2E_THREADS`` torch threads (default 1), restoring the setting after.

    On shared CPUs torch's intra-op threads spin-wait for each other: on 2 busy cores a
    2-thread dummy load of SmolLM2 took 25 s, a 1-thread one 2.7 s.
    """
    value = os.environ.get(THREADS_ENV, "").strip() or "1"
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"{THREADS_ENV}={value!r}, but should be an integer (0: leave torch's setting)") from None
    if threads <= 0 or not str(device).startswith("cpu"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["THREADS_ENV", "cpu_threads"]
