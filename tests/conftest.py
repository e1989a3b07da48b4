"""Fixtures shared by the tests of the reference."""

from __future__ import annotations

import pytest
import torch

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.conformance.assertions import snapshot

CUDA = pytest.param("cuda", marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
])


@pytest.fixture(scope="module")
def smollm():
    """``loadspec.conformance.e2e.smollm``, skipping when the e2e extra or the embedded GGUF is missing."""
    pytest.importorskip("gguf", reason="the gguf package (extra 'e2e') is not installed")
    pytest.importorskip("transformers", reason="transformers (extra 'e2e') is not installed")
    from loadspec.conformance.e2e import smollm as module

    try:
        module.gguf_path()
    except FileNotFoundError as error:
        pytest.skip(f"embedded model unavailable: {error}")
    return module


@pytest.fixture(params=["cpu", CUDA])
def device(request) -> str:
    """Each test using it runs on CPU and, where a GPU exists, on CUDA."""
    return request.param


@pytest.fixture(scope="session")
def model_state():
    """``model_state(module)``: the suite's ``snapshot`` of every parameter, buffer and KV host mirror of ``module``.

    The walk is the reference adapter's (``kernel_tensors``, ``host_mirrors``), so tests/ compares
    states exactly as the suite does; compare two with ``assertions.assert_unchanged``.
    """
    adapter = ReferenceAdapter()
    return lambda module: snapshot(adapter.kernel_tensors(module), adapter.host_mirrors(module))


pytest_plugins = ["pytester"]
