"""Reading a checkpoint directory: safetensors shards (with or without an index) and ``config.json``.

The one checkpoint reader of loadspec (the reference's ``weights_of``, the E2E inspection and
quantizer). It trusts nothing in the directory: every problem with a file, the index or a
shard header is one ``CheckpointFormatError`` (a ``ValueError``) naming the file, the tensor
where there is one, and the reason. Everything is validated before the first tensor is
yielded, so a rejected checkpoint never reaches a loader:

* **Paths.** A shard named by the index must be a plain file name (no ``/`` or ``\\``, not
  ``""``, ``.`` or ``..``, no NUL). Every path is resolved (symlinks followed) and must stay
  inside the checkpoint directory. One exception, for Hugging Face cache snapshots
  (``<repo>/snapshots/<revision>/``, whose files are symlinks to ``<repo>/blobs/<hash>``):
  when the resolved directory's parent is named ``snapshots``, a file may also resolve into
  that repository's ``blobs/`` folder, and nowhere else (not another repository, not the
  repository root).
* **Files.** Only regular files are opened: each path is ``stat``-ed first (a FIFO, socket,
  device or directory is rejected without being opened), then opened ``O_NONBLOCK`` and
  ``O_NOFOLLOW`` on its resolved path, and ``fstat``-ed again (same inode, still regular), so
  a swap between the check and the open cannot make the reader block on a FIFO or read a
  device. Files are opened with ``os.open`` (visible to ``sys.addaudithook``'s ``open``
  event) and mapped with ``mmap`` (copy-on-write): tensors are zero-copy views.
* **Headers** are parsed here, not by ``safetensors``, and checked against the file size before
  any tensor is read: the 8-byte little-endian length is at least 2, at most
  ``MAX_HEADER_BYTES`` and within the file; the header is UTF-8 JSON, an object without
  duplicate keys; ``__metadata__`` (optional) maps strings to strings; each tensor has exactly
  ``dtype`` (a known safetensors dtype), ``shape`` (non-negative ints) and ``data_offsets``
  (two ints within the data section) with ``end - begin == numel * itemsize``; sorted by
  offset the tensors cover the data section exactly (no overlap, no gap, no trailing bytes).
* **Index** (``model.safetensors.index.json``): a JSON object (no duplicate keys) with a
  ``weight_map`` object of non-empty tensor names to shard names, and at least one entry.
  Index and shards must agree exactly: a tensor the index lists but its shard does not hold,
  and a tensor a shard holds but the index does not list there (a phantom, or a duplicate
  of a tensor the index places in another shard) are rejected. Files in the directory that
  the index does not name are ignored, as ``transformers`` does.
* **No index**: ``model.safetensors`` if present, else every ``*.safetensors`` file (sorted); a
  tensor name in two of them is rejected. No shard at all names the directory.
* ``config.json`` (``read_config``): absent means ``{}``; otherwise a regular file inside the
  directory holding a JSON object.

Tensors are yielded shard by shard, in the index's shard order, by name within a shard (the
order ``safetensors.safe_open().keys()`` gives).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from loadspec.reference.errors import CheckpointFormatError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024
"""The largest safetensors header accepted (the ``safetensors`` library's own limit)."""
MAX_JSON_BYTES = 64 * 1024 * 1024
"""The largest index or ``config.json`` accepted."""
MAX_RANK = 64

DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "C64": torch.complex64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}
"""Safetensors dtype codes this reader accepts, and their torch dtypes."""
_ITEMSIZE = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in DTYPES.values()}


def _fail(where: Path | str, reason: str, tensor: str | None = None) -> CheckpointFormatError:
    return CheckpointFormatError(f"{where}: " + (f"tensor {tensor!r}: " if tensor is not None else "") + reason)


@dataclass(frozen=True)
class TensorHeader:
    """One tensor of a shard header: dtype, shape, and its absolute byte range in the file."""

    name: str
    file: Path
    dtype: torch.dtype
    dtype_code: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Shard:
    """A validated safetensors file: its tensors (header order is by name) and a private read-only map."""

    path: Path
    size: int
    metadata: dict[str, str]
    tensors: dict[str, TensorHeader]
    _map: mmap.mmap | None = field(default=None, repr=False)

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name`` of this shard: a zero-copy (copy-on-write) view of the file when aligned."""
        info = self.tensors.get(name)
        if info is None:
            raise _fail(self.path, "no such tensor in this shard", name)
        if info.numel == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        assert self._map is not None  # a shard with a non-empty tensor has a non-empty file
        if info.start % _ITEMSIZE[info.dtype]:  # misaligned: copy the bytes into an aligned buffer
            flat = torch.frombuffer(bytearray(self._map[info.start:info.end]), dtype=info.dtype)
        else:
            flat = torch.frombuffer(self._map, dtype=info.dtype, count=info.numel, offset=info.start)
        return flat.reshape(info.shape)


@dataclass
class Checkpoint:
    """A validated checkpoint directory: its shards in order and where each tensor is."""

    directory: Path
    index: Path | None
    shards: list[Shard]

    @property
    def tensors(self) -> dict[str, TensorHeader]:
        """Every tensor's header, by name."""
        return {name: info for shard in self.shards for name, info in shard.tensors.items()}

    def read(self, name: str) -> torch.Tensor:
        for shard in self.shards:
            if name in shard.tensors:
                return shard.read(name)
        raise _fail(self.directory, "no such tensor in the checkpoint", name)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for shard in self.shards:
            for name in shard.tensors:
                yield name, shard.read(name)


# ------------------------------------------------------------------ paths and files
def _roots(directory: Path) -> tuple[Path, list[Path]]:
    """The resolved directory and the folders its files may resolve into (itself; a HF snapshot's blobs)."""
    try:
        root = Path(os.path.realpath(directory))
        info = os.stat(root)
    except (OSError, ValueError) as exc:
        raise _fail(directory, f"not a readable checkpoint directory ({type(exc).__name__}: {exc})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise _fail(directory, "not a directory")
    allowed = [root]
    if root.parent.name == "snapshots":  # huggingface_hub cache: <repo>/snapshots/<rev>/<file> -> <repo>/blobs/<hash>
        allowed.append(root.parent.parent / "blobs")
    return root, allowed


def _check_name(name: object, where: Path, what: str) -> str:
    """``name`` if it is a plain file name, else raise naming ``where`` (the file that gave it)."""
    if not isinstance(name, str):
        raise _fail(where, f"{what} {name!r} is a {type(name).__name__}, not a file name")
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name or os.sep in name:
        raise _fail(where, f"{what} {name!r} is not a plain file name inside the checkpoint directory")
    return name


def _resolve(directory: Path, name: str, where: Path, what: str) -> tuple[Path, os.stat_result]:
    """The resolved path of file ``name`` of ``directory`` and its ``stat``; it must be a regular file inside."""
    root, allowed = _roots(directory)
    candidate = root / name
    resolved = Path(os.path.realpath(candidate))
    if not any(resolved.is_relative_to(folder) for folder in allowed):
        raise _fail(where, f"{what} {name!r} resolves to {resolved}, outside the checkpoint directory {root}")
    try:
        info = os.stat(resolved)
    except FileNotFoundError:
        raise _fail(where, f"{what} {name!r} does not exist in {root}") from None
    except (OSError, ValueError) as exc:
        raise _fail(where, f"{what} {name!r} cannot be examined ({type(exc).__name__}: {exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise _fail(where, f"{what} {name!r} is {_kind(info.st_mode)}, not a regular file")
    return resolved, info


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _open_regular(path: Path, expected: os.stat_result) -> tuple[int, int]:
    """``(fd, size)`` of regular file ``path`` (already resolved and ``stat``-ed as ``expected``)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _fail(path, f"cannot be opened ({type(exc).__name__}: {exc})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (expected.st_dev, expected.st_ino):
        os.close(fd)
        raise _fail(path, "changed between its check and its open (not the regular file examined)")
    return fd, info.st_size


def _pread(fd: int, count: int, offset: int, path: Path, what: str) -> bytes:
    out = b""
    while len(out) < count:
        chunk = os.pread(fd, count - len(out), offset + len(out))
        if not chunk:
            raise _fail(path, f"{what}: the file ended after {len(out)} of {count} bytes")
        out += chunk
    return out


def _no_duplicates(where: Path, what: str) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise _fail(where, f"{what} has key {key!r} twice")
            out[key] = value
        return out
    return hook


def _parse_json(raw: bytes, where: Path, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates(where, what))
    except UnicodeDecodeError as exc:
        raise _fail(where, f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise _fail(where, f"{what} is nested too deeply to be a valid file") from None
    except CheckpointFormatError:
        raise
    except ValueError as exc:  # json.JSONDecodeError, and int() limits on huge literals
        raise _fail(where, f"{what} is not valid JSON ({exc})") from None


def _read_json_file(directory: Path, name: str, what: str) -> Any:
    path, info = _resolve(directory, name, Path(directory) / name, what)
    fd, size = _open_regular(path, info)
    try:
        if size > MAX_JSON_BYTES:
            raise _fail(Path(directory) / name, f"{what} is {size} bytes, over the {MAX_JSON_BYTES}-byte limit")
        raw = _pread(fd, size, 0, Path(directory) / name, what)
    finally:
        os.close(fd)
    return _parse_json(raw, Path(directory) / name, what)


# ------------------------------------------------------------------ safetensors headers
def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_shard(directory: str | Path, name: str, *, where: Path | None = None) -> Shard:
    """Validate the header of shard ``name`` of ``directory`` against the file size and map it; see the module doc."""
    directory = Path(directory)
    path, info = _resolve(directory, name, where or directory / name, "shard")
    shown = directory / name
    fd, size = _open_regular(path, info)
    try:
        shard = _parse_header(fd, size, shown)
        if shard.size > 0 and any(t.numel for t in shard.tensors.values()):
            try:
                shard._map = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as exc:
                raise _fail(shown, f"cannot be mapped ({type(exc).__name__}: {exc})") from None
            if len(shard._map) != size:
                raise _fail(shown, f"changed size while being read ({size} -> {len(shard._map)} bytes)")
    finally:
        os.close(fd)
    return shard


def _parse_header(fd: int, size: int, path: Path) -> Shard:
    if size < 8:
        raise _fail(path, f"is {size} bytes: too short for a safetensors file (an 8-byte header length first)")
    length = int.from_bytes(_pread(fd, 8, 0, path, "header length"), "little")
    if length < 2:
        raise _fail(path, f"header length {length} is too small for a JSON object")
    if length > MAX_HEADER_BYTES:
        raise _fail(path, f"header length {length} is over the {MAX_HEADER_BYTES}-byte limit")
    if 8 + length > size:
        raise _fail(path, f"header length {length} runs past the end of the {size}-byte file")
    header = _parse_json(_pread(fd, length, 8, path, "header"), path, "the safetensors header")
    if not isinstance(header, dict):
        raise _fail(path, f"the safetensors header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _fail(path, "__metadata__ is not an object of strings")
    base, data_size = 8 + length, size - 8 - length
    tensors: dict[str, TensorHeader] = {}
    for name, entry in header.items():
        tensors[name] = _tensor_header(path, name, entry, base, data_size)
    spans = sorted(tensors.values(), key=lambda t: (t.start, t.end))
    at = base
    for info in spans:
        if info.start < at:
            raise _fail(path, f"data_offsets [{info.start - base}, {info.end - base}] overlap another tensor's "
                              f"bytes (which end at {at - base})", info.name)
        if info.start > at:
            raise _fail(path, f"data_offsets start at {info.start - base}, leaving bytes {at - base}.."
                              f"{info.start - base} of the data section unused", info.name)
        at = info.end
    if at != size:
        raise _fail(path, f"the tensors cover {at - base} of the {data_size} bytes after the header "
                          f"({size - at} trailing bytes)")
    ordered = {name: tensors[name] for name in sorted(tensors)}
    return Shard(path=path, size=size, metadata=dict(metadata), tensors=ordered)


def _tensor_header(path: Path, name: str, entry: object, base: int, data_size: int) -> TensorHeader:
    if not name:
        raise _fail(path, "a tensor has an empty name")
    if not isinstance(entry, dict):
        raise _fail(path, f"header entry is a JSON {type(entry).__name__}, not an object", name)
    if set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _fail(path, f"header entry has keys {sorted(entry)}, but should have exactly "
                          f"['data_offsets', 'dtype', 'shape']", name)
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(code, str) or code not in DTYPES:
        raise _fail(path, f"dtype {code!r} is not a known safetensors dtype ({', '.join(DTYPES)})", name)
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_int(d) and d >= 0 for d in shape):
        raise _fail(path, f"shape {shape!r} is not a list of at most {MAX_RANK} non-negative ints", name)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_int(o) for o in offsets)):
        raise _fail(path, f"data_offsets {offsets!r} is not a pair of ints", name)
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise _fail(path, f"data_offsets [{begin}, {end}] are not within the {data_size}-byte data section", name)
    dtype = DTYPES[code]
    expected = math.prod(shape) * _ITEMSIZE[dtype]
    if end - begin != expected:
        raise _fail(path, f"data_offsets [{begin}, {end}] hold {end - begin} bytes, but {code} of shape "
                          f"{tuple(shape)} needs {expected}", name)
    return TensorHeader(name=name, file=path, dtype=dtype, dtype_code=code, shape=tuple(shape),
                        start=base + begin, end=base + end)


# ------------------------------------------------------------------ directories
def _index_plan(directory: Path) -> dict[str, list[str]]:
    """Shard name -> tensor names, in index order, from a validated index."""
    where = directory / INDEX_FILE
    index = _read_json_file(directory, INDEX_FILE, "the index")
    if not isinstance(index, dict):
        raise _fail(where, f"the index is a JSON {type(index).__name__}, not an object")
    if "weight_map" not in index:
        raise _fail(where, "the index has no 'weight_map'")
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict):
        raise _fail(where, f"'weight_map' is a JSON {type(weight_map).__name__}, not an object")
    if not weight_map:
        raise _fail(where, "'weight_map' is empty: the index names no shard")
    plan: dict[str, list[str]] = {}
    for tensor, shard in weight_map.items():
        if not tensor:
            raise _fail(where, "'weight_map' has an empty tensor name")
        plan.setdefault(_check_name(shard, where, f"shard of tensor {tensor!r}"), []).append(tensor)
    return plan


def _has(directory: Path, name: str) -> bool:
    return os.path.lexists(directory / name)


def open_checkpoint(directory: str | Path) -> Checkpoint:
    """Validate checkpoint ``directory`` (paths, files, index, every shard header) and map its shards."""
    directory = Path(directory)
    _roots(directory)
    if _has(directory, INDEX_FILE):
        index = directory / INDEX_FILE
        plan = _index_plan(directory)
        indexed: list[Shard] = []
        for name, listed in plan.items():
            shard = read_shard(directory, name, where=index)
            absent = [t for t in listed if t not in shard.tensors]
            if absent:
                raise _fail(index, f"lists {len(absent)} tensor(s) in shard {name!r} that the shard does not hold: "
                                   f"{', '.join(absent[:5])}", absent[0])
            expected = set(listed)
            unlisted = [t for t in shard.tensors if t not in expected]
            if unlisted:
                raise _fail(directory / name, f"holds {len(unlisted)} tensor(s) the index {INDEX_FILE} does not "
                                              f"place in this shard: {', '.join(unlisted[:5])}", unlisted[0])
            indexed.append(shard)
        return Checkpoint(directory=directory, index=index, shards=indexed)
    if _has(directory, SINGLE_FILE):
        names = [SINGLE_FILE]
    else:
        try:
            names = sorted(entry.name for entry in os.scandir(directory) if entry.name.endswith(".safetensors"))
        except OSError as exc:
            raise _fail(directory, f"cannot be listed ({type(exc).__name__}: {exc})") from None
        if not names:
            raise _fail(directory, f"holds no safetensors file (no {INDEX_FILE}, no {SINGLE_FILE}, no *.safetensors)")
    shards: list[Shard] = []
    seen: dict[str, str] = {}
    for name in names:
        shard = read_shard(directory, name)
        for tensor in shard.tensors:
            if tensor in seen:
                raise _fail(directory / name, f"duplicates a tensor of {seen[tensor]} (without an index, "
                                              f"every tensor must be in one file)", tensor)
            seen[tensor] = name
        shards.append(shard)
    return Checkpoint(directory=directory, index=None, shards=shards)


def shard_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint, in index order when an index exists (all of them validated)."""
    return [shard.path for shard in open_checkpoint(directory).shards]


def iter_checkpoint(directory: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor of every shard; the whole checkpoint is validated by this call.

    A malformed checkpoint raises ``CheckpointFormatError`` here, before any tensor is yielded.
    """
    return iter(open_checkpoint(directory))


def read_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory (a JSON object), or ``{}`` when absent."""
    directory = Path(directory)
    if not _has(directory, CONFIG_FILE):
        return {}
    config = _read_json_file(directory, CONFIG_FILE, "config.json")
    if not isinstance(config, dict):
        raise _fail(directory / CONFIG_FILE, f"config.json is a JSON {type(config).__name__}, not an object")
    return config


def quantization_config(directory: str | Path) -> dict[str, Any] | None:
    """The ``quantization_config`` of a checkpoint directory, if any (an object, or absent)."""
    qconfig = read_config(directory).get("quantization_config")
    if qconfig is not None and not isinstance(qconfig, dict):
        raise _fail(Path(directory) / CONFIG_FILE, f"quantization_config is a JSON {type(qconfig).__name__}, "
                                                   f"not an object")
    return qconfig


if sys.byteorder != "little":  # pragma: no cover - safetensors is little-endian; torch.frombuffer is native
    raise ImportError("loadspec.reference.checkpoint reads safetensors as native little-endian memory")
