"""Fixtures shared by the tests of the reference."""

from __future__ import annotations

import pytest
import torch

CUDA = pytest.param("cuda", marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
])


@pytest.fixture(params=["cpu", CUDA])
def device(request) -> str:
    """Each test using it runs on CPU and, where a GPU exists, on CUDA."""
    return request.param


pytest_plugins = ["pytester"]
