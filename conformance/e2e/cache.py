"""The user cache the E2E tooling writes converted and quantized checkpoints into.

One write protocol for every entry (``cached_directory``): check, lock, check again,
write into a temporary sibling, rename into place; concurrent runs fill an entry once
and a reader never sees a half-written one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def cache_root() -> Path:
    """``$LOADSPEC_CACHE``, else ``$XDG_CACHE_HOME/loadspec``, else ``~/.cache/loadspec``."""
    if os.environ.get("LOADSPEC_CACHE"):
        return Path(os.environ["LOADSPEC_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "loadspec"
    return Path.home() / ".cache" / "loadspec"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if absent), so concurrent runs fill the cache once."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_sha256(path: Path) -> str:
    """sha256 of one file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_directory(target: Path, *, is_complete: Callable[[Path], bool], write: Callable[[Path], None],
                     force: bool = False) -> Path:
    """``target`` once it is complete, filling it first with ``write(tmp_dir)`` if it is missing or stale.

    The writer fills an empty temporary directory beside ``target`` (same file system,
    permissions from the umask), which is renamed into place under a lock; a stale
    ``target`` is moved aside first. A writer that raises leaves nothing behind.
    """
    if not force and is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if not force and is_complete(target):  # another process wrote it meanwhile
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
            write(tmp)
            if target.exists():
                stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                os.rename(target, stale / "dir")
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


__all__ = ["cache_root", "file_lock", "file_sha256", "cached_directory"]
