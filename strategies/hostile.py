"""Hostile checkpoint directories: corrupt, lying and malicious variants of a real checkpoint [issue 14].

Start from a valid checkpoint directory (``CheckpointLayout(...).write(directory)``), read it
once with ``BaseCheckpoint.read``, draw ``HostileCase``s from it and put each on disk with
``write_case``. A case is plain data (file bytes to replace, FIFOs, directories and symlinks
to create) plus the names an error message must mention (the file, and the tensor where
there is one). Every case must be rejected with a ``ValueError`` naming one of them, except
those marked ``may_be_valid`` (a flipped header byte can leave a valid file: compare with
``safetensors`` then).

Families: ``truncate``, ``flip`` and ``length`` (the bytes of a real shard), ``header`` (a real
header rewritten with one lie: dtype, shape, offsets, entries, metadata, types, duplicates,
invalid or deeply nested JSON, trailing bytes), ``index`` (the index: its types, traversal,
absolute paths, devices, a sibling directory's shard, FIFOs, directories, symlinks out,
missing, phantom, misplaced and duplicated entries) and ``directory`` (no shard, a special
file named like one, duplicates between index-less shards). ``config_cases`` draws hostile
``config.json`` values.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

__all__ = ["BaseCheckpoint", "HostileCase", "hostile_cases", "config_cases", "write_case", "FAMILIES", "SIBLING",
           "OUTSIDE_FILE"]

INDEX = "model.safetensors.index.json"
SIBLING = "sibling"
"""The folder next to the checkpoint directory that ``write_case`` fills with a valid copy of every shard."""
OUTSIDE_FILE = "outside.txt"
"""A file next to the checkpoint directory (outside it) that symlinks and traversals point at."""
FAMILIES = ("truncate", "flip", "length", "header", "index", "directory")
_DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}


@dataclass(frozen=True)
class BaseCheckpoint:
    """The files of a valid checkpoint directory, and its shards' parsed headers."""

    files: dict[str, bytes]
    shards: tuple[str, ...]
    index: dict[str, Any] | None

    @classmethod
    def read(cls, directory: str | Path) -> BaseCheckpoint:
        directory = Path(directory)
        files = {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}
        index = json.loads(files[INDEX]) if INDEX in files else None
        shards = tuple(dict.fromkeys(index["weight_map"].values())) if index else ("model.safetensors",)
        return cls(files=files, shards=shards, index=index)

    def header(self, shard: str) -> tuple[dict[str, Any], bytes]:
        """The parsed JSON header of ``shard`` and its data section."""
        raw = self.files[shard]
        (length,) = struct.unpack("<Q", raw[:8])
        return json.loads(raw[8:8 + length]), raw[8 + length:]

    def tensors(self, shard: str) -> dict[str, torch.Tensor]:
        return load_safetensors(self.files[shard])


@dataclass(frozen=True)
class HostileCase:
    """One hostile directory: the base's files with ``replace`` (``None`` deletes), then ``specials``.

    ``specials`` are ``(kind, name, target)``: ``fifo`` and ``dir`` create ``name`` (after
    removing a file of that name), ``symlink`` makes ``name`` a link to ``target``.
    """

    family: str
    description: str
    names: tuple[str, ...]
    replace: dict[str, bytes | None] = field(default_factory=dict, repr=False)
    specials: tuple[tuple[str, str, str], ...] = ()
    may_be_valid: bool = False


def write_case(base: BaseCheckpoint, case: HostileCase, work: str | Path) -> Path:
    """Write ``case`` into ``work/ckpt`` (returned), with ``work/sibling/`` and ``work/outside.txt`` next to it."""
    work = Path(work)
    directory, sibling = work / "ckpt", work / SIBLING
    directory.mkdir(parents=True)
    sibling.mkdir()
    (work / OUTSIDE_FILE).write_text("outside the checkpoint directory\n")
    for name, content in base.files.items():
        if name != "config.json":
            (sibling / name).write_bytes(content)
    files: dict[str, bytes | None] = {**base.files, **case.replace}
    for name, data in files.items():
        if data is not None:
            (directory / name).write_bytes(data)
    for kind, name, target in case.specials:
        path = directory / name
        if path.exists() or path.is_symlink():
            path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            path.mkdir()
        else:
            path.symlink_to(target)
    return directory


# ------------------------------------------------------------------ helpers
def _shard_bytes(header: dict[str, Any], data: bytes, *, pad: bool = True) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def _entries(header: dict[str, Any]) -> list[str]:
    return sorted(name for name in header if name != "__metadata__")


_BAD_DTYPES: list[Any] = ["F32X", "f32", "", "float32", "F8_E4M3FN", 5, None, ["F32"], True]
_BAD_SHAPE_TYPES: list[Any] = [["2"], [2.0], [-1], [True], [None], [{}], 5, "x", None, {"0": 1}]
_BAD_ENTRIES: list[Any] = [5, "x", [], None, True]
_BAD_METADATA: list[Any] = [5, [], "pt", {"format": 5}, {"format": None}, {"format": ["pt"]}]
_BAD_HEADERS: list[Any] = [[], 5, "x", None, 1.5]
_DEEP = 50_000


@st.composite
def _header_case(draw: st.DrawFn, base: BaseCheckpoint) -> HostileCase:
    shard = draw(st.sampled_from(base.shards), label="shard")
    header, data = base.header(shard)
    names = _entries(header)
    tensor = draw(st.sampled_from(names), label="tensor")
    entry = dict(header[tensor])
    begin, end = entry["data_offsets"]
    kind = draw(st.sampled_from(["dtype", "shape", "shape type", "offsets", "shift", "entry", "keys", "metadata",
                                 "header type", "duplicate", "invalid json", "not utf-8", "deep", "trailing",
                                 "lying size"]), label="lie")
    lied = {**header}
    text: bytes | None = None
    extra = b""
    if kind == "dtype":
        size = _DTYPE_SIZES[entry["dtype"]]
        other = [code for code, s in _DTYPE_SIZES.items() if s != size]
        entry["dtype"] = draw(st.sampled_from(_BAD_DTYPES + other), label="dtype")
        lied[tensor] = entry
    elif kind == "shape":
        shape = list(entry["shape"])
        numel = 1
        for dim in shape:
            numel *= dim
        options = [shape + [2], [d + 1 for d in shape] or [2], [2**40, 2**40], [2**62] * 4, [0] * max(1, len(shape))]
        options = [o for o in options if _numel(o) != numel]
        entry["shape"] = draw(st.sampled_from(options), label="shape")
        lied[tensor] = entry
    elif kind == "shape type":
        entry["shape"] = draw(st.sampled_from(_BAD_SHAPE_TYPES), label="shape")
        lied[tensor] = entry
    elif kind == "offsets":
        size = len(data)
        offsets: list[Any] = [[begin, end + 1], [end, begin] if end != begin else [begin, end + 1], [-1, end],
                              [begin, size + 8], [size + 1, size + 9], [begin, end, 0], [str(begin), end], [begin],
                              [float(begin), end], None, [begin, 2**64], "0"]
        entry["data_offsets"] = draw(st.sampled_from(offsets), label="offsets")
        lied[tensor] = entry
    elif kind == "shift":  # consistent byte count, but overlapping another tensor or leaving a gap
        delta = draw(st.integers(1, 64).flatmap(lambda d: st.sampled_from([d, -d])), label="delta")
        if not 0 <= begin + delta <= end + delta <= len(data) or end == begin:
            delta = 1 if end + 1 <= len(data) and end > begin else 0
        if delta == 0:  # a lone zero-size tensor cannot move: lie about its end instead
            entry["data_offsets"] = [begin, end + 1]
        else:
            entry["data_offsets"] = [begin + delta, end + delta]
        lied[tensor] = entry
    elif kind == "entry":
        lied[tensor] = draw(st.sampled_from(_BAD_ENTRIES), label="entry")
    elif kind == "keys":
        which = draw(st.sampled_from(["dtype", "shape", "data_offsets", "+extra"]), label="key")
        if which == "+extra":
            entry["offsets"] = entry["data_offsets"]
        else:
            del entry[which]
        lied[tensor] = entry
    elif kind == "metadata":
        lied["__metadata__"] = draw(st.sampled_from(_BAD_METADATA), label="metadata")
    elif kind == "header type":
        text = json.dumps(draw(st.sampled_from(_BAD_HEADERS), label="header")).encode()
    elif kind == "duplicate":
        compact = json.dumps(header, separators=(",", ":"))
        dup = json.dumps({tensor: header[tensor]}, separators=(",", ":"))[1:-1]
        text = ("{" + dup + "," + compact[1:]).encode()
    elif kind == "invalid json":
        body = json.dumps(header, separators=(",", ":")).encode()
        cut = draw(st.integers(0, len(body) - 1), label="cut")
        text = body[:cut] + draw(st.sampled_from([b"", b"}", b"]", b",}", b"\x00", b"{"]), label="tail")
        if text == body or text.strip() == b"{}":  # the tail closed the cut object again: cut it for real
            text = body[:cut]
    elif kind == "not utf-8":
        body = json.dumps(header, separators=(",", ":")).encode()
        at = body.index(tensor.encode())
        text = body[:at] + b"\xff\xfe" + body[at + 2:]
    elif kind == "deep":
        depth = draw(st.integers(1_000, _DEEP), label="depth")
        text = b'{"__metadata__":' + b"[" * depth + b"]" * depth + b"," + json.dumps(header)[1:].encode()
    elif kind == "trailing":
        extra = b"\x00" * draw(st.integers(1, 64), label="trailing")
    else:  # "lying size": a tensor's bytes dropped from the data section, header unchanged
        data = data[:begin] + data[end:] if end > begin else data + b"\x00"
    raw = _shard_bytes(lied, data) if text is None else struct.pack("<Q", len(text)) + text + data
    return HostileCase("header", f"{shard}: {kind} ({tensor})", (shard, tensor), {shard: raw + extra})


def _numel(shape: list[int]) -> int:
    out = 1
    for dim in shape:
        out *= dim
    return out


@st.composite
def _bytes_case(draw: st.DrawFn, base: BaseCheckpoint, family: str) -> HostileCase:
    shard = draw(st.sampled_from(base.shards), label="shard")
    raw = base.files[shard]
    (length,) = struct.unpack("<Q", raw[:8])
    if family == "truncate":
        cut = draw(st.one_of(st.integers(0, 8 + length + 8), st.integers(0, len(raw) - 1)), label="cut")
        cut = min(cut, len(raw) - 1)
        return HostileCase("truncate", f"{shard} cut to {cut} of {len(raw)} bytes", (shard,), {shard: raw[:cut]})
    if family == "flip":
        at = draw(st.integers(0, 8 + length - 1), label="position")
        xor = draw(st.integers(1, 255), label="xor")
        flipped = raw[:at] + bytes([raw[at] ^ xor]) + raw[at + 1:]
        return HostileCase("flip", f"{shard} byte {at} ^= {xor:#04x}", (shard,), {shard: flipped}, may_be_valid=True)
    size = len(raw)
    value = draw(st.one_of(
        st.sampled_from([0, 1, length - 1, length + 1, size - 8, size - 7, size, 100 * 2**20 + 1, 2**63, 2**64 - 1]),
        st.integers(0, 2**64 - 1),
        st.integers(-64, 64).filter(bool).map(lambda d: max(0, length + d))), label="length")
    if value == length:
        value = length + 1
    lied = struct.pack("<Q", value) + raw[8:]
    return HostileCase("length", f"{shard} header length {length} -> {value}", (shard,), {shard: lied})


_INDEX_TYPES: list[Any] = [b"", b"not json", b"[]", b"5", b'"x"', b"null", b"{}", b'{"metadata": {}}', b"\xff\xfe{}",
                           b"[" * 100_000 + b"]" * 100_000]
_WEIGHT_MAPS: list[Any] = ["model.safetensors", 5, [], None, {}, True, [["a", "b"]]]


@st.composite
def _index_case(draw: st.DrawFn, base: BaseCheckpoint) -> HostileCase:
    assert base.index is not None
    index = base.index
    weight_map: dict[str, str] = dict(index["weight_map"])
    tensor = draw(st.sampled_from(sorted(weight_map)), label="tensor")
    shard = weight_map[tensor]
    kind = draw(st.sampled_from(["file", "weight_map", "value type", "path", "special shard", "special index",
                                 "missing entry", "phantom", "misplaced", "duplicate key", "duplicate tensor",
                                 "deleted shard", "deep value"]), label="lie")

    def with_map(mapping: Any) -> dict[str, bytes | None]:
        return {INDEX: json.dumps({**index, "weight_map": mapping}).encode()}

    if kind == "file":
        content = draw(st.sampled_from(_INDEX_TYPES), label="content")
        return HostileCase("index", f"index file {content[:20]!r}", (INDEX,), {INDEX: content})
    if kind == "weight_map":
        value = draw(st.sampled_from(_WEIGHT_MAPS), label="weight_map")
        return HostileCase("index", f"weight_map = {value!r}", (INDEX,), with_map(value))
    if kind == "value type":
        value = draw(st.sampled_from([5, None, [], {}, True, 1.5, [shard]]), label="value")
        return HostileCase("index", f"{tensor} -> {value!r}", (INDEX, tensor), with_map({**weight_map, tensor: value}))
    if kind == "deep value":
        depth = draw(st.integers(1_000, _DEEP), label="depth")
        text = json.dumps({**weight_map, tensor: "@"}).replace('"@"', "[" * depth + "]" * depth)
        return HostileCase("index", f"{tensor} -> nested {depth}", (INDEX,),
                           {INDEX: ('{"weight_map":' + text + "}").encode()})
    if kind == "path":
        value = draw(st.sampled_from(["", ".", "..", f"../{shard}", f"../{SIBLING}/{shard}", f"/{shard}",
                                      "/dev/zero", "/etc/passwd", "/proc/self/environ", f"sub/{shard}",
                                      f"./{shard}", f"{shard}\0", f"..\\{shard}", "no-such-00001.safetensors",
                                      f"../{OUTSIDE_FILE}", f"{shard}/"]), label="path")
        return HostileCase("index", f"{tensor} -> {value!r}", (INDEX,), with_map({**weight_map, tensor: value}))
    if kind == "special shard":
        special = draw(st.sampled_from(["fifo", "dir", "symlink"]), label="special")
        target = draw(st.sampled_from([f"../{SIBLING}/{shard}", "/dev/zero", "/etc/passwd", f"../{OUTSIDE_FILE}",
                                       "/dev/null", "no-such-target"]), label="target") if special == "symlink" else ""
        return HostileCase("index", f"shard {shard} is a {special} {target}".strip(), (shard,),
                           specials=((special, shard, target),))
    if kind == "special index":
        special = draw(st.sampled_from(["fifo", "dir", "symlink"]), label="special")
        target = draw(st.sampled_from([f"../{SIBLING}/{INDEX}", "/dev/zero", f"../{OUTSIDE_FILE}"]), label="target") \
            if special == "symlink" else ""
        return HostileCase("index", f"the index is a {special} {target}".strip(), (INDEX,),
                           specials=((special, INDEX, target),))
    if kind == "deleted shard":
        return HostileCase("index", f"shard {shard} deleted", (shard,), {shard: None})
    if kind == "missing entry":
        listed = [t for t, s in weight_map.items() if s == shard]
        if len(listed) < 2:  # the shard's only tensor: dropping the entry unlinks a whole (valid) shard
            extra = draw(st.sampled_from(sorted(set(weight_map) - {tensor})), label="other")
            return HostileCase("index", f"{extra} moved into {shard}", (INDEX, shard, extra),
                               with_map({**weight_map, extra: shard}))
        mapping = {t: s for t, s in weight_map.items() if t != tensor}
        return HostileCase("index", f"{tensor} not listed", (shard, tensor), with_map(mapping))
    if kind == "phantom":
        phantom = draw(st.sampled_from(["model.layers.99.mlp.phantom.weight", tensor + ".phantom", "x"]),
                       label="phantom")
        target = draw(st.sampled_from(base.shards), label="target")
        return HostileCase("index", f"phantom {phantom} in {target}", (INDEX, phantom),
                           with_map({**weight_map, phantom: target}))
    if kind == "misplaced":
        others = [s for s in base.shards if s != shard]
        target = draw(st.sampled_from(others), label="target")
        return HostileCase("index", f"{tensor} placed in {target}", (INDEX, tensor, target),
                           with_map({**weight_map, tensor: target}))
    if kind == "duplicate key":
        body = json.dumps(weight_map)
        other = draw(st.sampled_from(base.shards), label="target")
        text = '{"weight_map": {' + json.dumps(tensor) + ": " + json.dumps(other) + ", " + body[1:] + "}"
        return HostileCase("index", f"{tensor} listed twice", (INDEX, tensor), {INDEX: text.encode()})
    # "duplicate tensor": another shard also holds the tensor (a valid file)
    others = [s for s in base.shards if s != shard]
    target = draw(st.sampled_from(others), label="target")
    tensors = {**base.tensors(target), tensor: base.tensors(shard)[tensor]}
    return HostileCase("index", f"{tensor} also in {target}", (target, tensor),
                       {target: save_safetensors(tensors, metadata={"format": "pt"})})


@st.composite
def _directory_case(draw: st.DrawFn, base: BaseCheckpoint) -> HostileCase:
    every = {name: None for name in base.files}
    kind = draw(st.sampled_from(["empty", "config only", "special single", "special glob", "duplicate glob",
                                 "directory shard"]), label="lie")
    if kind == "empty":
        return HostileCase("directory", "empty directory", ("<dir>",), dict(every))
    if kind == "config only":
        return HostileCase("directory", "config.json only", ("<dir>",),
                           {**every, "config.json": base.files["config.json"]})
    if kind in ("special single", "special glob"):
        name = "model.safetensors" if kind == "special single" else "model-00001-of-00002.safetensors"
        special = draw(st.sampled_from(["fifo", "dir", "symlink"]), label="special")
        target = draw(st.sampled_from(["/dev/zero", "/etc/passwd", f"../{OUTSIDE_FILE}",
                                       f"../{SIBLING}/{base.shards[0]}"]), label="target") \
            if special == "symlink" else ""
        return HostileCase("directory", f"{name} is a {special} {target}".strip(), (name,),
                           {n: None for n in base.files if n != "config.json"},
                           specials=((special, name, target),))
    if kind == "directory shard":  # an index-less directory whose only *.safetensors is a directory
        return HostileCase("directory", "x.safetensors is a directory", ("x.safetensors",),
                           {n: None for n in base.files if n != "config.json"},
                           specials=(("dir", "x.safetensors", ""),))
    # "duplicate glob": no index, two files sharing a tensor
    tensors: dict[str, torch.Tensor] = {}
    for shard in base.shards:
        tensors.update(base.tensors(shard))
    names = sorted(tensors)
    shared = draw(st.sampled_from(names), label="tensor")
    first = {n: tensors[n] for n in names[: len(names) // 2]} | {shared: tensors[shared]}
    second = {n: tensors[n] for n in names[len(names) // 2:]} | {shared: tensors[shared]}
    return HostileCase("directory", f"{shared} in a.safetensors and b.safetensors", (shared, "b.safetensors"),
                       {**{n: None for n in base.files if n != "config.json"},
                        "a.safetensors": save_safetensors(first), "b.safetensors": save_safetensors(second)})


def hostile_cases(base: BaseCheckpoint, families: tuple[str, ...] = FAMILIES) -> st.SearchStrategy[HostileCase]:
    """Draws ``HostileCase``s of ``base`` from ``families`` (``index`` needs a sharded base)."""
    choices: list[st.SearchStrategy[HostileCase]] = []
    for family in families:
        if family in ("truncate", "flip", "length"):
            choices.append(_bytes_case(base, family))
        elif family == "header":
            choices.append(_header_case(base))
        elif family == "index":
            if base.index is None or len(base.shards) < 2:
                raise ValueError("the index family needs a base checkpoint with an index and two shards or more")
            choices.append(_index_case(base))
        elif family == "directory":
            choices.append(_directory_case(base))
        else:
            raise ValueError(f"family {family!r}, but should be one of {FAMILIES}")
    return st.one_of(choices)


_WRONG_INTS: list[Any] = ["2", 2.0, True, False, None, [2], {"n": 2}, 0, -1, -(2**63)]
_BAD_QCONFIGS: list[Any] = [
    "fp8", [], 5, True, {"quant_method": 5}, {"quant_method": "int4"}, {"quant_method": None, "weight_strategy": 5},
    {"quant_method": "compressed-tensors", "config_groups": [1]},
    {"quant_method": "compressed-tensors", "config_groups": {"g": 5}},
    {"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": "float"}}},
    {"quant_method": "quark", "global_quant_config": 5},
    {"quant_method": "quark", "global_quant_config": {"weight": []}},
    {"quant_method": "modelopt", "quant_algo": ["FP8"]}, {"quant_method": "fp8", "weight_block_size": "128"},
]
_CONFIG_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size",
                "num_key_value_heads", "head_dim")


@st.composite
def config_cases(draw: st.DrawFn, config: dict[str, Any]) -> HostileCase:
    """Draws hostile ``config.json`` files for a checkpoint whose valid config is ``config``."""
    kind = draw(st.sampled_from(["file", "wrong type", "huge", "lying size", "tie", "float field", "ratio",
                                 "fewer layers", "special", "quantization_config"]), label="lie")
    name = "config.json"

    def with_(**changes: Any) -> dict[str, bytes | None]:
        return {name: json.dumps({**config, **changes}).encode()}

    if kind == "file":
        content = draw(st.sampled_from([b"", b"{", b"[]", b"5", b'"x"', b"null", b"\xff{}", b"[" * 100_000]),
                       label="content")
        return HostileCase("config", f"config.json {content[:20]!r}", (name,), {name: content})
    if kind == "special":
        special = draw(st.sampled_from(["fifo", "dir", "symlink"]), label="special")
        target = draw(st.sampled_from(["/dev/zero", f"../{OUTSIDE_FILE}", "/etc/passwd"]), label="target") \
            if special == "symlink" else ""
        return HostileCase("config", f"config.json is a {special} {target}".strip(), (name,),
                           specials=((special, name, target),))
    if kind == "wrong type":
        key = draw(st.sampled_from(_CONFIG_KEYS), label="key")
        value = draw(st.sampled_from(_WRONG_INTS), label="value")
        if key in ("num_key_value_heads", "head_dim") and value is None:
            value = "1"
        return HostileCase("config", f"{key} = {value!r}", (name, key), with_(**{key: value}))
    if kind == "huge":
        key = draw(st.sampled_from(["num_hidden_layers", "vocab_size", "hidden_size", "intermediate_size"]),
                   label="key")
        value = draw(st.sampled_from([10**8, 10**10, 2**40, 2**62]), label="value")
        return HostileCase("config", f"{key} = {value}", (name,), with_(**{key: value}))
    if kind == "lying size":
        key = draw(st.sampled_from(["hidden_size", "vocab_size", "intermediate_size", "num_key_value_heads",
                                    "head_dim", "num_attention_heads"]), label="key")
        factor = draw(st.sampled_from([2, 4]), label="factor")
        return HostileCase("config", f"{key} x{factor}", (name,), with_(**{key: config[key] * factor}))
    if kind == "tie":
        value = draw(st.sampled_from(["false", "true", 0, 1, None, [], "False"]), label="value")
        return HostileCase("config", f"tie_word_embeddings = {value!r}", (name, "tie_word_embeddings"),
                           with_(tie_word_embeddings=value))
    if kind == "float field":
        key = draw(st.sampled_from(["rms_norm_eps", "rope_theta"]), label="key")
        value = draw(st.sampled_from(["1e-5", -1.0, 0.0, None if key == "x" else True, [1.0], {}]), label="value")
        return HostileCase("config", f"{key} = {value!r}", (name, key), with_(**{key: value}))
    if kind == "quantization_config":
        value = draw(st.sampled_from(_BAD_QCONFIGS), label="value")
        return HostileCase("config", f"quantization_config = {value!r}", (name,), with_(quantization_config=value))
    if kind == "ratio":
        return HostileCase("config", "num_key_value_heads does not divide num_attention_heads", (name,),
                           with_(num_key_value_heads=config["num_attention_heads"] + 1))
    layers = config["num_hidden_layers"]
    return HostileCase("config", f"num_hidden_layers = {layers - 1} with {layers} layers of tensors", (name,),
                       with_(num_hidden_layers=max(1, layers - 1)))
