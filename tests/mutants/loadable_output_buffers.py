"""LOAD-15: an attention layer's output scale buffers are persistent, hence loadable by name (vLLM)."""

from loadspec.reference import auto_loader
from mutants._patched import PatchedAdapter


class LoadableOutputBuffersAdapter(PatchedAdapter):
    name = report_id = "mutant-loadable-output-buffers"
    targets = ("LOAD-15",)
    suite = ("test_load.py",)
    patches = ((auto_loader, "processing_owned", lambda owner, name: False),)
