"""The user cache loadspec writes converted and quantized checkpoints into, and its file lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


def cache_root() -> Path:
    """``$LOADSPEC_CACHE``, else ``$XDG_CACHE_HOME/loadspec``, else ``~/.cache/loadspec``."""
    if os.environ.get("LOADSPEC_CACHE"):
        return Path(os.environ["LOADSPEC_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "loadspec"
    return Path.home() / ".cache" / "loadspec"


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on ``path`` (created if absent), so concurrent runs fill the cache once."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
