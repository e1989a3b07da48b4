"""The README's "Using the strategies in your own tests" example is a working pytest module.

It is run as an engine maintainer would run it, with ``myengine`` played by a
stand-in built on the reference: it passes, and a stand-in that drops the
checkpoint's k/v scales (what a missing name mapping does) fails it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STAND_IN = '''
import json
from pathlib import Path

from loadspec import reference


def load_kernel_state(directory):
    """Load the checkpoint in ``directory`` and return the kernel state in canonical names."""
    config = json.loads((Path(directory) / "config.json").read_text())
    model = reference.build(reference.ModelSpec.from_json(json.dumps(config["loadspec_spec"])))
    reference.first_load(model, directory)
    state = reference.export(model)
    if DROP_KV_SCALES:  # a loader that never maps the producer's scale names: kernels use 1.0
        state = {name: tensor.new_ones(()) if name.endswith(("attn.k_scale", "attn.v_scale")) else tensor
                 for name, tensor in state.items()}
    return state
'''


def example_source() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- strategies-example:start -->\n```python\n(.*?)```\n<!-- strategies-example:end -->",
                      readme, re.S)
    assert found, "README lost its strategies example"
    return found.group(1)


def run_example(tmp_path: Path, *, drop_kv_scales: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_myengine_loading.py").write_text(example_source())
    (tmp_path / "myengine.py").write_text(f"DROP_KV_SCALES = {drop_kv_scales}\n{STAND_IN}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1"}
    # cwd is tmp_path, so this is a plain pytest run of the engine's own tests: no loadspec plugin, no conftest.
    return subprocess.run([sys.executable, "-m", "pytest", "test_myengine_loading.py", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", "--hypothesis-seed=0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_readme_strategies_example_passes_on_a_correct_engine(tmp_path):
    result = run_example(tmp_path, drop_kv_scales=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


def test_readme_strategies_example_catches_dropped_kv_scales(tmp_path):
    result = run_example(tmp_path, drop_kv_scales=True)
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-2000:]
    assert "differs from the reference" in result.stdout


def test_readme_strategies_example_uses_the_public_strategies():
    source = example_source()
    assert "from loadspec.strategies import checkpoint_layouts, layer_graphs" in source
    assert "checkpoint_layouts(" in source and "layer_graphs(" in source
