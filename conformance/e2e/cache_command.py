"""``loadspec cache [--prune [--keep N]] [--json]``: what the loadspec cache holds, and evicting old versions.

The E2E tooling caches converted and quantized checkpoints (``cache.py``); entries keyed
by a content hash are versioned, and each run already evicts versions idle for an hour
beyond the two newest of a family. ``--prune`` removes every version but the newest
``--keep`` (default 1) of each family at once, whatever their age.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

from loadspec.conformance.e2e.cache import cache_root, directory_bytes, family_of, prune_versions, versions


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _families(root: Path) -> Iterator[tuple[Path, str | None]]:
    """``(area, family)`` for every versioned family under ``root``, ``(area, None)`` for an area holding none."""
    if not root.is_dir():
        return
    for area in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        families = sorted({f for entry in area.iterdir() if entry.is_dir() and (f := family_of(entry))})
        yield from ((area, family) for family in families) if families else [(area, None)]


def inventory(root: Path) -> list[dict]:
    """One row per cache entry that is not versioned, and per family of versioned entries: path (relative to
    ``root``), versions (None for an unversioned entry), bytes, last used (mtime, newest version)."""
    rows: list[dict] = []
    for area, family in _families(root):
        found = [area] if family is None else versions(area, family)
        rows.append({"path": area.name if family is None else f"{area.name}/{family}",
                     "versions": None if family is None else len(found),
                     "bytes": sum(directory_bytes(entry) for entry in found), "last_used": found[0].stat().st_mtime})
    return rows


def prune(root: Path, *, keep: int) -> list[Path]:
    """Every versioned family under ``root`` keeps its ``keep`` newest versions; the removed paths."""
    return [path for area, family in _families(root) if family is not None
            for path in prune_versions(area, family, keep=keep, idle_s=0.0)]


def main(argv: list[str] | None = None) -> int:
    """List the cache (or prune it, then list it); 0, or 2 on a usage error (argparse)."""
    parser = argparse.ArgumentParser(prog="loadspec cache", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--prune", action="store_true", help="remove all but the newest --keep versions of each family")
    parser.add_argument("--keep", type=int, default=1, help="versions kept per family by --prune (default 1)")
    parser.add_argument("--json", action="store_true", help="print the inventory (and what was removed) as JSON")
    args = parser.parse_args(argv)
    if args.keep < 1:
        parser.error(f"--keep {args.keep}: should be at least 1")
    root = cache_root()
    removed = prune(root, keep=args.keep) if args.prune else []
    rows = inventory(root)
    if args.json:
        print(json.dumps({"root": str(root), "entries": rows, "removed": [str(p) for p in removed]}, indent=2))
        return 0
    print(f"loadspec cache: {root} ({_size(sum(row['bytes'] for row in rows))})")
    for row in rows:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["last_used"]))
        count = "" if row["versions"] is None else f", {row['versions']} version(s)"
        print(f"  {row['path']:44s} {_size(row['bytes']):>10s}{count}, last used {used}")
    if args.prune:
        print(f"removed {len(removed)} old version(s)")
    return 0


__all__ = ["inventory", "prune", "main"]
