"""Repository-root conftest: registers the loadspec plugin for checkout runs.

The same module name is what ``-p loadspec.conformance.plugin`` registers for an
installed package, so the plugin is registered once either way.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest_plugins = ["loadspec.conformance.plugin"]
