"""The user cache the E2E tooling writes converted and quantized checkpoints into.

One write protocol for every entry (``cached_directory``): check, lock, check again,
write into a temporary sibling, rename into place; concurrent runs fill an entry once
and a reader never sees a half-written one.

Entries keyed by a content hash (``cached_version``: ``<family>-<16 hex digits>``) get a
new directory whenever the code or input that decides their bytes changes, so old
versions are evicted: each family keeps its ``VERSIONS_KEPT`` most recently used
versions, and never drops one used in the last ``EVICTION_IDLE_S`` seconds (a concurrent
run on an older checkout may still be reading it). ``loadspec cache`` lists and prunes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

VERSIONS_KEPT = 2  # the current version of a family and the one before it (switching branches)
EVICTION_IDLE_S = 3600.0
_VERSIONED = re.compile(r"(?P<family>.+)-[0-9a-f]{16}")
"""A versioned entry's directory name: ``<family>-<16 hex digits>``."""


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


def _remove_directory(path: Path) -> None:
    """Move ``path`` aside to a hidden sibling (readers see it gone at once, never half-deleted), then delete it."""
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.rename(path, aside / "dir")
    shutil.rmtree(aside, ignore_errors=True)
    (path.parent / f".{path.name}.lock").unlink(missing_ok=True)


def versions(parent: Path, family: str) -> list[Path]:
    """The cached versions of ``family`` in ``parent`` (``<family>-<16 hex digits>`` directories), most recently
    used first."""
    if not parent.is_dir():
        return []
    found = [entry for entry in parent.iterdir() if entry.is_dir() and family_of(entry) == family]
    return sorted(found, key=lambda entry: entry.stat().st_mtime, reverse=True)


def family_of(entry: Path) -> str | None:
    """The family of a versioned entry's directory name, or None if it carries no version suffix."""
    match = _VERSIONED.fullmatch(entry.name)
    return match.group("family") if match else None


def prune_versions(parent: Path, family: str, *, keep: int = VERSIONS_KEPT, idle_s: float = EVICTION_IDLE_S,
                   now: float | None = None) -> list[Path]:
    """Remove ``family``'s versions beyond the ``keep`` most recently used that nobody used for ``idle_s`` seconds;
    the removed paths."""
    if keep < 1:
        raise ValueError(f"keep={keep!r}, but should be at least 1 (the version in use)")
    now = time.time() if now is None else now
    parent.mkdir(parents=True, exist_ok=True)
    removed = []
    with file_lock(parent / f".{family}.prune.lock"):
        for entry in versions(parent, family)[keep:]:
            if now - entry.stat().st_mtime >= idle_s:
                _remove_directory(entry)
                removed.append(entry)
    return removed


def cached_version(parent: Path, family: str, key: str, *, is_complete: Callable[[Path], bool],
                   write: Callable[[Path], None]) -> Path:
    """``cached_directory(parent / f"{family}-{key}")``, marked used (its mtime), then ``prune_versions(family)``.

    ``key`` is 16 hex digits of a hash of whatever decides the entry's bytes.
    """
    target = parent / f"{family}-{key}"
    if family_of(target) != family:
        raise ValueError(f"key={key!r}, but should be 16 lowercase hex digits")
    target = cached_directory(target, is_complete=is_complete, write=write)
    with contextlib.suppress(OSError):  # a read-only cache still serves its entries
        os.utime(target)
        prune_versions(parent, family)
    return target


def directory_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file() and not entry.is_symlink())


__all__ = ["VERSIONS_KEPT", "EVICTION_IDLE_S", "cache_root", "file_lock", "file_sha256", "cached_directory",
           "versions", "family_of", "prune_versions", "cached_version", "directory_bytes"]
