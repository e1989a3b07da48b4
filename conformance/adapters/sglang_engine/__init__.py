"""The SGLang adapter: ``--impl=sglang`` runs the suite against SGLang's real loader code on CPU.

It runs in the virtual environment ``sglang_env.sh`` (next to this file) builds
(``make setup-sglang``); its reports and the causes of its failures are in
``reports/sglang-0.5.23/``. Modules, in import order (each imports only those above it):

* ``runtime``: the CPU shims (set before SGLang is imported: torchvision's registrations, the
  RoPE placeholder, the FP8 stand-in), the one-rank runtime and the processing-order recorder;
* ``model``: the model tier (SGLang's ``LlamaForCausalLM`` from a ``ModelSpec``, first load, dummy
  load, reload through ``WeightUpdater``, export);
* ``adapter``: ``SglangAdapter`` (the default loader path), ``SglangV2Adapter``
  (``SGLANG_ENABLE_WEIGHT_LOADER_V2=1``) and the diagnostic ``SglangKvOnlyAdapter`` (no FP8
  linears), the primitives tier and the protocol's entry points.

What every adapter shares (the export walk, kernel tensors, host mirrors, the processing-order
bookkeeping, the FP8 arithmetic) is in ``conformance/adapters/glue.py``; ``env_common.sh`` beside
it holds what ``sglang_env.sh`` shares with ``vllm_env.sh``.
"""

import importlib.util

if importlib.util.find_spec("sglang") is None:
    raise ImportError("SGLang is not installed in this environment: run `make setup-sglang`, then "
                      "`make conformance-sglang` (or .venv-sglang/bin/pytest conformance --impl=sglang)")

from loadspec.conformance.adapters.sglang_engine import runtime  # noqa: F401, E402, I001  (first: the shims)
from loadspec.conformance.adapters.sglang_engine.adapter import (  # noqa: E402
    SglangAdapter,
    SglangKvOnlyAdapter,
    SglangV2Adapter,
)

__all__ = ["SglangAdapter", "SglangV2Adapter", "SglangKvOnlyAdapter"]
