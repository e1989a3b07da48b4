"""The SGLang adapter (``--impl=sglang``) from outside SGLang's environment, and its recipe.

What runs SGLang itself is the suite in ``.venv-sglang`` (``make conformance-sglang``); here, in
loadspec's own ``.venv``, only what needs no SGLang: without it, choosing the adapter is a clean
one-line usage error naming ``make setup-sglang``. The checks that need SGLang skip with that reason.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from loadspec.conformance import selection

ADAPTER_DIR = Path(__file__).resolve().parents[1] / "conformance" / "adapters" / "sglang_engine"
HAS_SGLANG = importlib.util.find_spec("sglang") is not None
needs_no_sglang = pytest.mark.skipif(HAS_SGLANG, reason="SGLang is installed here: the usage error cannot happen")
needs_sglang = pytest.mark.skipif(not HAS_SGLANG, reason="SGLang is not installed here (make setup-sglang builds "
                                                         ".venv-sglang, where make conformance-sglang runs it)")


def test_sglang_is_registered():
    assert selection.registered()["sglang"] == "loadspec.conformance.adapters.sglang_engine:SglangAdapter"


@needs_no_sglang
def test_without_sglang_selection_names_make_setup_sglang():
    with pytest.raises(selection.AdapterSelectionError) as raised:
        selection.resolve("sglang")
    message = str(raised.value)
    assert "make setup-sglang" in message
    assert "\n" not in message


@needs_no_sglang
@pytest.mark.slow
def test_without_sglang_pytest_impl_sglang_is_a_usage_error(tmp_path):
    (tmp_path / "test_nothing.py").write_text("def test_nothing(impl):\n    pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "loadspec.conformance.plugin", "-p",
                             "no:cacheprovider", "--impl=sglang", str(tmp_path / "test_nothing.py")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "make setup-sglang" in result.stderr
    assert "Traceback" not in result.stderr


def test_env_script_is_strict_and_idempotent():
    script = (ADAPTER_DIR / "sglang_env.sh").read_text()
    common = (ADAPTER_DIR.parent / "env_common.sh").read_text()  # the marker logic both env scripts source
    assert "set -euo pipefail" in script
    assert "torch==2.13.0" in script and "--no-deps" in script and "sglang==0.5.23" in script
    assert "/../env_common.sh" in script and "env_exit_if_complete" in script
    assert "MARKER=" in script and "nothing to do" in common  # a complete venv is left alone


@needs_sglang
def test_adapter_resolves_with_its_declared_capabilities():
    adapter = selection.resolve("sglang")
    assert adapter.report_id == f"sglang-{adapter.version}"
    assert "per_token_head_kv" not in adapter.capabilities and "mla" not in adapter.capabilities
    assert "torchvision" in adapter.notes and "scaled_fp8_quant" in adapter.notes  # every shim named


@needs_sglang
@pytest.mark.parametrize("scheme", ["dynamic", "static"])
def test_checkpoint_config_says_the_specs_activation_scheme(scheme):
    """The config.json the model tier writes says static activations exactly when the spec does [STATIC-1]."""
    from loadspec.conformance.adapters.sglang_engine.model import checkpoint_quantization_config

    static = scheme == "static"
    assert checkpoint_quantization_config("fp8", activation_scheme=scheme)["activation_scheme"] == scheme
    quark = checkpoint_quantization_config("quark", activation_scheme=scheme)
    assert quark["global_quant_config"]["input_tensors"]["is_dynamic"] is not static
    assert all(entry["input_tensors"]["is_dynamic"] is not static for entry in quark["layer_quant_config"].values())
    groups = checkpoint_quantization_config("compressed-tensors", activation_scheme=scheme)["config_groups"]
    assert all(group["input_activations"]["dynamic"] is not static for group in groups.values())
