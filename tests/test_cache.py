"""The E2E cache's versioned entries: eviction of old versions and ``loadspec cache`` (no rule: harness)."""

from __future__ import annotations

import json
import os
import time

import pytest

from loadspec.conformance import cli
from loadspec.conformance.e2e import cache

KEYS = [f"{i:016x}" for i in range(1, 6)]


def _entry(parent, name, *, age_s, size=10):
    path = parent / name
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x" * size)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_versions_are_the_family_s_hashed_directories_newest_first(tmp_path):
    old = _entry(tmp_path, f"quark-tensor-x1-{KEYS[0]}", age_s=300)
    new = _entry(tmp_path, f"quark-tensor-x1-{KEYS[1]}", age_s=10)
    _entry(tmp_path, f"quark-tensor-x1-static-{KEYS[2]}", age_s=0)  # another family sharing the prefix
    _entry(tmp_path, "quark-tensor-x1-notahash", age_s=0)
    (tmp_path / f".quark-tensor-x1-{KEYS[3]}.tmp-abc").mkdir()  # a write in progress is hidden
    assert cache.versions(tmp_path, "quark-tensor-x1") == [new, old]
    assert cache.family_of(new) == "quark-tensor-x1"
    assert cache.family_of(tmp_path / "smollm2-135m-instruct") is None


def test_prune_keeps_the_newest_and_every_version_used_recently(tmp_path):
    entries = [_entry(tmp_path, f"modelopt-tensor-x1-{key}", age_s=age)
               for key, age in zip(KEYS, (0, 7200, 60, 9000, 8000), strict=True)]
    (tmp_path / f".{entries[3].name}.lock").write_text("")
    removed = cache.prune_versions(tmp_path, "modelopt-tensor-x1", keep=2, idle_s=3600)
    # newest two (ages 0 and 60) kept, the others idle > 1 h removed, lock file of the removed one too
    assert sorted(removed) == sorted([entries[1], entries[3], entries[4]])
    assert cache.versions(tmp_path, "modelopt-tensor-x1") == [entries[0], entries[2]]
    assert not (tmp_path / f".{entries[3].name}.lock").exists()
    assert [p.name for p in tmp_path.iterdir() if ".old-" in p.name] == []


def test_prune_never_removes_a_version_used_within_the_idle_time(tmp_path):
    entries = [_entry(tmp_path, f"fused-qkv-tensor-x1-{key}", age_s=age)
               for key, age in zip(KEYS[:3], (0, 10, 20), strict=True)]
    assert cache.prune_versions(tmp_path, "fused-qkv-tensor-x1", keep=1, idle_s=3600) == []
    assert cache.versions(tmp_path, "fused-qkv-tensor-x1") == entries


def test_prune_refuses_to_keep_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"keep=0.*at least 1"):
        cache.prune_versions(tmp_path, "a", keep=0)


def test_cached_version_writes_once_marks_use_and_evicts_old_versions(tmp_path):
    stale = _entry(tmp_path, f"autofp8-tensor-x1-{KEYS[0]}", age_s=9000)
    previous = _entry(tmp_path, f"autofp8-tensor-x1-{KEYS[1]}", age_s=8000)
    writes = []

    def write(tmp):
        writes.append(tmp)
        (tmp / "model.safetensors").write_bytes(b"new")

    def complete(path):
        return (path / "model.safetensors").is_file()

    target = cache.cached_version(tmp_path, "autofp8-tensor-x1", KEYS[2], is_complete=complete, write=write)
    assert target == tmp_path / f"autofp8-tensor-x1-{KEYS[2]}" and (target / "model.safetensors").read_bytes() == b"new"
    assert cache.versions(tmp_path, "autofp8-tensor-x1") == [target, previous]  # VERSIONS_KEPT = 2
    assert not stale.exists()
    os.utime(target, (1.0, 1.0))
    again = cache.cached_version(tmp_path, "autofp8-tensor-x1", KEYS[2], is_complete=complete, write=write)
    assert again == target and len(writes) == 1
    assert time.time() - target.stat().st_mtime < 60  # a hit marks the version used


def test_cached_version_rejects_a_key_that_is_not_a_short_hash(tmp_path):
    with pytest.raises(ValueError, match=r"key='\.\./x'.*16 lowercase hex digits"):
        cache.cached_version(tmp_path, "a", "../x", is_complete=lambda p: False, write=lambda p: None)


def test_loadspec_cache_lists_and_prunes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOADSPEC_CACHE", str(tmp_path))
    e2e = tmp_path / "e2e"
    newest = _entry(e2e, f"quark-tensor-x1-{KEYS[0]}", age_s=0, size=2048)
    _entry(e2e, f"quark-tensor-x1-{KEYS[1]}", age_s=30, size=1024)
    _entry(tmp_path, "smollm2-135m-instruct", age_s=0, size=5)
    assert cli.main(["cache", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {(row["path"], row["versions"], row["bytes"]) for row in listed["entries"]} == {
        ("e2e/quark-tensor-x1", 2, 3072), ("smollm2-135m-instruct", None, 5)}
    assert cli.main(["cache", "--prune"]) == 0  # explicit: whatever the age
    out = capsys.readouterr().out
    assert "removed 1 old version(s)" in out and "e2e/quark-tensor-x1" in out and "1 version(s)" in out
    assert cache.versions(e2e, "quark-tensor-x1") == [newest]
    with pytest.raises(SystemExit) as info:
        cli.main(["cache", "--prune", "--keep", "0"])
    assert info.value.code == 2 and "--keep 0: should be at least 1" in capsys.readouterr().err
