"""The vLLM adapter: ``--impl=vllm`` runs the suite against vLLM's real loader code on CPU.

It runs in the virtual environment ``vllm_env.sh`` (next to this file) builds
(``make setup-vllm``); its report and the causes of its failures are in
``reports/vllm-0.33.0/``. Modules, in import order (each imports only those above it):

* ``runtime``: vLLM's environment (set before vLLM is imported), the one-rank configs and
  build context, the FP8 stand-in and the processing-order recorders;
* ``quant_configs``: vLLM's quantization config objects for a checkpoint;
* ``model``: the model tier (build from a ``ModelSpec``, first load, dummy load, reload, export);
* ``adapter``: ``VllmAdapter``, the primitives tier and the protocol's entry points.

What every adapter shares (the export walk, kernel tensors, host mirrors, the processing-order
bookkeeping, the FP8 arithmetic) is in ``conformance/adapters/glue.py``; ``env_common.sh`` beside
it holds what ``vllm_env.sh`` shares with ``sglang_env.sh``.
"""

from loadspec.conformance.adapters.vllm_engine import runtime  # noqa: F401, I001  (first: sets vLLM's environment)
from loadspec.conformance.adapters.vllm_engine.adapter import VllmAdapter

__all__ = ["VllmAdapter"]
