# What the engine adapters' environment scripts (vllm_engine/vllm_env.sh, sglang_engine/sglang_env.sh) share:
# the checkout check, the knobs, the marker that makes a complete venv a no-op, the step log, venv creation,
# the pip command and the marker written last.  Sourced, not run; each script keeps its own recipe and steps.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../env_common.sh"
#   env_init NAME DEFAULT_VENV [VENV_ARG]   # NAME prefixes every message (vllm_env, sglang_env)
#   RECIPE=...; MARKER="$VENV/..."
#   env_exit_if_complete                    # exits 0 when MARKER's first line is RECIPE
#   env_begin                               # step(), the venv, PIP=(... pip install ...)
#   ... the script's own steps ...
#   env_finish                              # writes MARKER (recipe, completion time, pip freeze)

# REPO_ROOT (the checkout this file is in), VENV ($3, else <repo>/$2), PYTHON and PIP_FLAGS; exits 1 outside a checkout.
env_init() {
  ENV_NAME="$1"
  REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  if [[ ! -f "$REPO_ROOT/pyproject.toml" ]]; then
    echo "$ENV_NAME: $REPO_ROOT is not a loadspec checkout (no pyproject.toml): run this script from one" >&2
    exit 1
  fi
  VENV="${3:-$REPO_ROOT/$2}"
  PYTHON="${PYTHON:-python3}"
  PIP_FLAGS="${PIP_FLAGS:-}"
}

# Exits 0 when $MARKER records a complete install of this very $RECIPE.
env_exit_if_complete() {
  if [[ -f "$MARKER" ]] && [[ "$(head -n 1 "$MARKER")" == "$RECIPE" ]]; then
    echo "$ENV_NAME: $VENV is complete (marker $MARKER); nothing to do."
    exit 0
  fi
}

step() { echo "$ENV_NAME: [$(( $(date +%s) - start ))s] $*"; }

# Starts the step clock, creates $VENV with $PYTHON unless it has a python, and sets PIP.
env_begin() {
  start=$(date +%s)
  if [[ ! -x "$VENV/bin/python" ]]; then
    step "creating venv $VENV with $PYTHON ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV"
  fi
  # shellcheck disable=SC2206  # PIP_FLAGS is split into words on purpose
  PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check $PIP_FLAGS)
}

# The very last step: $MARKER records $RECIPE, when it completed, and what pip installed.
env_finish() {
  {
    echo "$RECIPE"
    echo "completed $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(( $(date +%s) - start ))s"
    "$VENV/bin/python" -m pip freeze --disable-pip-version-check
  } > "$MARKER"
  step "done: $VENV ($(du -sh "$VENV" | cut -f1))"
}
