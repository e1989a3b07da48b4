"""Reading a checkpoint directory: safetensors shards (with or without an index) and ``config.json``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def shard_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint, in index order when an index exists."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = list(dict.fromkeys(weight_map.values()))
        missing = [f for f in files if not (directory / f).exists()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that do not exist: {', '.join(missing)}")
        return [directory / f for f in files]
    if (directory / SINGLE_FILE).exists():
        return [directory / SINGLE_FILE]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory} holds no safetensors file")
    return files


def iter_checkpoint(directory: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of every shard, in file order."""
    for path in shard_files(directory):
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


def read_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory, or ``{}`` when absent."""
    path = Path(directory) / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def quantization_config(directory: str | Path) -> dict[str, Any] | None:
    """The ``quantization_config`` of a checkpoint directory, if any."""
    return read_config(directory).get("quantization_config")
