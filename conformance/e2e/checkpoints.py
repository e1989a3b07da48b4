"""Checkpoint directories for the E2E check: where they come from and whether the check can score them [E2E-1, E2E-2].

``inspect_checkpoint`` reads ``config.json``, the safetensors headers and the KV-cache scale
tensors only (never whole weights) and raises ``CheckpointError`` (a ``ValueError``) for what
the check cannot score: no ``config.json``, a malformed checkpoint (``reference.checkpoint``'s
``CheckpointFormatError``: the reader validates paths, the index and every shard header), a
``config.json`` whose values are wrong or disagree with the tensor headers (all listed in one
message; see ``check_config``), then, all in one message: every unsupported or unknown field of
the ``quantization_config`` (``spec_inference``), ``input_scale`` tensors that disagree with the
config's activation scheme, no KV-cache scales (an engine would use 1.0), KV-cache scales of the
wrong size (one element, or one per KV head for ``attn_head``), or non-positive ones. Nothing is
built before the config passed. KV-cache scale names are resolved with the
reference's cache-scale mapper, the same resolver the loader uses [NAMES-1..13].
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from loadspec.conformance.e2e.forward import config_parameter_count, config_problems, spec_from_hf_config
from loadspec.conformance.e2e.smollm import smollm_spec
from loadspec.conformance.e2e.spec_inference import Scheme, SchemeError, infer_scheme, kv_strategy_hint, read_scheme
from loadspec.reference.cache_scale_mappers import cache_scale_mapper
from loadspec.reference.checkpoint import CONFIG_FILE, Checkpoint, open_checkpoint, read_config
from loadspec.reference.errors import CheckpointFormatError, UnsupportedSchemeError
from loadspec.reference.spec import ModelSpec
from loadspec.strategies.capabilities import spec_capabilities

KV_CACHE_DTYPE = "fp8_e4m3"
CHECKPOINT_ENV = "LOADSPEC_CHECKPOINT"  # a user checkpoint: a local directory or a Hub id (org/name[@revision])
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+(@[\w./-]+)?")
_LAYER_KV_SCALE = re.compile(r"^model\.layers\.(\d+)\.self_attn\.attn\.([qkv])_scale$")
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")
ALLOCATION_FACTOR = 2
ALLOCATION_SLACK = 16 * 2**20
"""A config may describe at most ``ALLOCATION_FACTOR * (elements in the tensor headers) + ALLOCATION_SLACK``
parameters: more would make the check allocate memory the checkpoint cannot fill."""


KVValue = float | tuple[float, ...]
"""One KV-cache scale as the checkpoint gives it: a float (per tensor) or one float per KV head (``attn_head``)."""
WHY = ("the end-to-end check runs FP8 e4m3 linears (per-tensor or per-channel weights; static or dynamic "
       "activations) with FP8 KV-cache scales per tensor or per KV head, in the checkpoint's dtype")


class CheckpointError(ValueError):
    """A checkpoint the end-to-end check cannot score; the message says which one and why."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``inspect_checkpoint`` read from a checkpoint directory (headers and KV scales only)."""

    path: Path
    config: dict
    quant_method: str
    linear_quant: str  # "fp8_per_tensor" or "fp8_per_channel"
    kv_scales: tuple[tuple[KVValue, KVValue], ...]  # per layer (k, v) an engine must end with (v follows k and k v)
    scale_names: tuple[str, ...]  # the checkpoint's KV-cache scale tensors
    scheme: Scheme | None = None  # what the config says (spec_inference)
    q_scales: tuple[float | None, ...] = ()  # per layer the file's q scale (per-tensor checkpoints; None: none)

    @property
    def num_layers(self) -> int:
        return len(self.kv_scales)


def _checkpoint(path: Path) -> Checkpoint:
    """The validated checkpoint (headers only: nothing is read until a tensor is asked for)."""
    try:
        return open_checkpoint(path)
    except CheckpointFormatError as exc:
        raise CheckpointError(str(exc)) from None


def _expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """HF Llama tensor name (layer ``{}``) -> the shape a valid ``config`` gives it."""
    hidden, heads, vocab = config["hidden_size"], config["num_attention_heads"], config["vocab_size"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    inter = config["intermediate_size"]
    return {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
            "model.norm.weight": (hidden,),
            "model.layers.{}.self_attn.q_proj.weight": (heads * head_dim, hidden),
            "model.layers.{}.self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            "model.layers.{}.self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            "model.layers.{}.self_attn.o_proj.weight": (hidden, heads * head_dim),
            "model.layers.{}.mlp.gate_proj.weight": (inter, hidden),
            "model.layers.{}.mlp.up_proj.weight": (inter, hidden),
            "model.layers.{}.mlp.down_proj.weight": (hidden, inter),
            "model.layers.{}.input_layernorm.weight": (hidden,),
            "model.layers.{}.post_attention_layernorm.weight": (hidden,)}


def check_config(path: Path, config: object, checkpoint: Checkpoint) -> None:
    """Raise one ``CheckpointError`` listing every problem of ``config`` and its disagreements with the headers.

    Types and sizes (``forward.config_problems``); the shapes of the HF Llama tensors present
    (``embed_tokens``, ``lm_head``, norms, projections) against the config's sizes; no tensor of
    a layer at or beyond ``num_hidden_layers``; and the allocation bound: the config may
    describe at most ``ALLOCATION_FACTOR`` times the elements the headers hold, plus
    ``ALLOCATION_SLACK`` (a checkpoint stores every parameter, so a bigger config lies).
    Nothing is allocated: sizes are Python ints.
    """
    problems = config_problems(config)
    headers = checkpoint.tensors
    if not problems and isinstance(config, dict):
        expected = _expected_shapes(config)
        layers = config["num_hidden_layers"]
        beyond = sorted({index for name in headers for m in [_LAYER_INDEX.search(name)] if m
                         for index in [int(m.group(1))] if index >= layers})
        if beyond:
            problems.append(f"num_hidden_layers={layers}, but the checkpoint has tensors of layer(s) "
                            f"{', '.join(map(str, beyond[:5]))}")
        for name, info in sorted(headers.items()):
            match = _LAYER_INDEX.search(name)
            key = name.replace(f"layers.{match.group(1)}.", "layers.{}.", 1) if match else name
            shape = expected.get(key)
            if shape is not None and info.shape != shape:
                problems.append(f"{name} has shape {info.shape} in {info.file.name}, but config.json gives {shape}")
        count, stored = config_parameter_count(config), sum(info.numel for info in headers.values())
        bound = ALLOCATION_FACTOR * stored + ALLOCATION_SLACK
        if count > bound:
            problems.append(f"config.json describes {count:,} parameters, but the tensor headers hold {stored:,} "
                            f"elements: refusing to build more than {bound:,} ({ALLOCATION_FACTOR}x + "
                            f"{ALLOCATION_SLACK:,})")
    if problems:
        raise CheckpointError(f"{path / CONFIG_FILE}: {len(problems)} problem(s): " + "; ".join(problems[:20])
                              + (f"; and {len(problems) - 20} more" if len(problems) > 20 else ""))


def _linear_scale_problems(scheme: Scheme, headers: dict) -> list[str]:
    """What the tensor headers say against the scheme: static ``input_scale`` present exactly when the config says
    static activations [STATIC-1]; every FP8 weight with its ``weight_scale``."""
    problems: list[str] = []
    fp8 = sorted(n for n, info in headers.items() if n.endswith(".weight") and info.dtype_code.startswith("F8"))
    static = sorted(n for n in headers if n.endswith(".input_scale"))
    no_scale = [n for n in fp8 if n[: -len("weight")] + "weight_scale" not in headers]
    if no_scale:
        problems.append(f"{len(no_scale)} FP8 weights without a weight_scale (e.g. {no_scale[0]})")
    if scheme.static_inputs:
        lacking = [n for n in fp8 if n[: -len("weight")] + "input_scale" not in headers]
        if lacking:
            problems.append(f"the config says static activations, but {len(lacking)} FP8 weights have no "
                            f"input_scale (e.g. {lacking[0]})")
    elif static:
        problems.append(f"static activation scales ({len(static)} input_scale tensors, e.g. {static[0]}), but the "
                        f"config says {scheme.activation_scheme or 'weight-only'} activations: an engine has no "
                        f"parameter to load them into")
    return problems


def check_quantization_config(qconfig: dict | None) -> None:
    """Raise ``UnsupportedSchemeError`` unless ``qconfig`` is absent or an FP8 e4m3 scheme read here
    (``spec_inference.infer_scheme``: every unknown or unsupported field in one message)."""
    if not qconfig:
        return
    try:
        infer_scheme({"quantization_config": qconfig})
    except SchemeError as exc:
        raise UnsupportedSchemeError(str(exc)) from None


def _kv_scales(path: Path, checkpoint: Checkpoint, layers: int, *, heads: int | None
               ) -> tuple[list[tuple[KVValue, KVValue]], list[float | None], list[str], list[int], list[str]]:
    """Per layer ``(k, v)`` (v follows k, k follows v [KVPROC-4]) and the file's q scale (``None``: none; per-tensor
    checkpoints only: FP8 attention applies it, e.g. ModelOpt's ``q_proj.q_scale`` [NAMES-15]), the k/v scale
    names found, the layers without k or v, and every problem. ``heads`` is the KV-head count when the config says
    per-head scales (``attn_head``): each k/v scale then holds one value per head [HEADS-1]; otherwise exactly one
    element. The names are every q/k/v scale tensor found."""
    mapper = cache_scale_mapper()
    headers = checkpoint.tensors
    found: dict[tuple[int, str], dict[str, KVValue]] = {}
    problems: list[str] = []
    rejected: set[int] = set()  # layers with a scale already reported as a problem: not "missing" too
    wrong_size: list[str] = []
    wrong_what = ""
    for name in sorted(headers):
        mapped = mapper.map_name(name)
        match = _LAYER_KV_SCALE.match(mapped or "")
        if match is None or (match.group(2) == "q" and (heads is not None or int(match.group(1)) >= layers)):
            continue
        shape = headers[name].shape
        want = 1 if heads is None else heads
        if math.prod(shape) != want:
            what = ("exactly one element: the config asks for per-tensor KV-cache scales" if heads is None else
                    f"{heads} elements (one per KV head, e.g. ({heads}, 1, 1)): the config asks for attn_head scales")
            wrong_size.append(f"{name} has shape {shape}")
            wrong_what = what
            rejected.add(int(match.group(1)))
            continue
        values = tuple(float(x) for x in checkpoint.read(name).float().reshape(-1))
        if not all(math.isfinite(x) and x > 0 for x in values):
            problems.append(f"KV-cache scale {name}={values if heads else values[0]!r}, but should be finite and > 0")
            rejected.add(int(match.group(1)))
            continue
        found.setdefault((int(match.group(1)), match.group(2)), {})[name] = values if heads is not None else values[0]
    if wrong_size:
        problems.insert(0, f"KV-cache scale {wrong_size[0]}, but should have {wrong_what}" if len(wrong_size) == 1 else
                        f"{len(wrong_size)} KV-cache scales have the wrong size (e.g. {', '.join(wrong_size[:2])}), "
                        f"but each should have {wrong_what}")
    scales, q_scales, missing = [], [], []
    for index in range(layers):
        got: dict[str, KVValue] = {}
        for kind in ("q", "k", "v"):
            seen = found.get((index, kind), {})
            if len(set(seen.values())) > 1:
                problems.append(f"conflicting {kind} scales for layer {index}: {seen}")
            if seen:
                got[kind] = next(iter(seen.values()))
        if "k" not in got and "v" not in got and index not in rejected:
            missing.append(index)
        k = got.get("k", got.get("v", 1.0))
        scales.append((k, got.get("v", k)))
        q = got.get("q")  # only per-tensor checkpoints keep a q: one float
        q_scales.append(q if isinstance(q, float) else None)
    return scales, q_scales, [name for seen in found.values() for name in seen], missing, problems


def _raise_problems(path: Path, scheme_problems: list[str], problems: list[str]) -> None:
    """One ``CheckpointError`` listing every problem (the scheme's first), or nothing when there is none."""
    parts = ([f"unsupported quantization_config scheme: {'; '.join(scheme_problems)}"] if scheme_problems else [])
    parts += problems
    if parts:
        count = len(scheme_problems) + len(problems)
        raise CheckpointError(f"{path / CONFIG_FILE}: the end-to-end check cannot score this checkpoint "
                              f"({count} problem(s)): " + "; ".join(parts) + f" [{WHY}]")


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Validate an FP8-KV checkpoint directory without loading its weights; raise ``CheckpointError`` if unusable.

    The scheme is read from the config as engines read it (``spec_inference``); the KV-cache
    scales may be in any producer's layout (``strategies.producers``); each layer needs a k or
    a v scale (the other follows it), finite and positive, with one element (per-tensor) or one
    per KV head (``attn_head``). Every problem is listed in one ``CheckpointError``.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not os.path.lexists(config_file):  # present but not a regular file inside: read_config says why
        raise CheckpointError(f"{path}: no config.json: not a Hugging Face checkpoint directory")
    try:
        config = read_config(path)
    except CheckpointFormatError as exc:
        raise CheckpointError(str(exc)) from None
    checkpoint = _checkpoint(path)
    check_config(path, config, checkpoint)
    qconfig = config.get("quantization_config") or None
    scheme_problems: list[str] = []
    problems: list[str] = []
    scheme: Scheme | None = None
    try:
        scheme = read_scheme(path, config)
    except SchemeError as exc:
        scheme_problems += exc.problems
    if scheme is not None:
        problems += _linear_scale_problems(scheme, checkpoint.tensors)
        try:
            scheme.spec_overrides()
        except SchemeError as exc:
            scheme_problems += [f"this loadspec cannot build {p}" for p in exc.problems]
    # the method: config.json's, else ModelOpt's hf_quant_config.json (read_scheme), as vLLM reads them
    method = (qconfig or {}).get("quant_method") or (scheme.quant_method if scheme is not None else None)
    try:
        spec = spec_from_hf_config(config, kv_cache_dtype=KV_CACHE_DTYPE, max_parameters=None,
                                   quant_method=method)
    except ValueError as exc:
        _raise_problems(path, scheme_problems, [*problems, f"unsupported model: {exc}"])
        raise  # unreachable: the line above raised
    layers = len(spec.layers)
    per_head = kv_strategy_hint(config, scheme) == "attn_head"
    kv_scales, q_scales, found_names, missing, kv_problems = _kv_scales(
        path, checkpoint, layers, heads=spec.num_kv_heads if per_head else None)
    problems += kv_problems
    if missing:
        prefix = f"model.layers.{missing[0]}.self_attn."
        problems.append(
            f"no KV-cache scales in {len(missing)} of {layers} layers (e.g. {prefix}*: no name the "
            f"cache-scale mapper maps to {prefix}attn.k_scale or v_scale); with kv_cache_dtype={KV_CACHE_DTYPE!r} "
            f"an engine would use 1.0 for their k and v scales, so this is not a calibrated FP8-KV checkpoint")
    if method is None and found_names:
        problems.append(f"KV-cache scales (e.g. {found_names[0]}) but no quantization_config in config.json: an "
                        f"engine would not load them")
    elif scheme is not None and scheme.quant_method is None and not missing:
        problems.append("no quantization_config: not an FP8 checkpoint")
    _raise_problems(path, scheme_problems, problems)
    assert scheme is not None and scheme.quant_method is not None  # no problem left means a scheme was read
    return CheckpointInfo(path=path, config=config, quant_method=scheme.quant_method,
                          linear_quant=scheme.linear_quant, kv_scales=tuple(kv_scales),
                          scale_names=tuple(found_names), scheme=scheme, q_scales=tuple(q_scales))


def spec_for(info: CheckpointInfo) -> ModelSpec:
    """The ``ModelSpec`` of a checkpoint from its ``config.json``: FP8 linears, FP8 KV cache, its quant_method."""
    return spec_from_hf_config(info.config, linear_quant=info.linear_quant, kv_cache_dtype=KV_CACHE_DTYPE,
                               **_overrides(info))


def _overrides(info: CheckpointInfo) -> dict:
    """``ModelSpec`` fields the checkpoint's scheme decides: quant method, activation scheme, KV-scale strategy and
    dtype (the model is built in the checkpoint's dtype)."""
    return info.scheme.spec_overrides() if info.scheme is not None else {"quant_method": info.quant_method}


def smollm_spec_for(info: CheckpointInfo) -> ModelSpec:
    """The ``ModelSpec`` of a quantized SmolLM2 checkpoint: ``smollm_spec`` with its quant scheme and method."""
    return smollm_spec(linear_quant=info.linear_quant, kv_cache_dtype=KV_CACHE_DTYPE).with_(**_overrides(info))


def required_capabilities(spec: ModelSpec, device: str = "cpu") -> tuple[str, ...]:
    """Adapter capabilities a run of ``spec`` on ``device`` needs: ``spec_capabilities`` plus ``cuda`` on CUDA."""
    needs = set(spec_capabilities(spec))
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
    except Exception as exc:  # noqa: BLE001 - any failure of a malformed tokenizer file, named in the message
        raise CheckpointError(f"{path}: no usable tokenizer: {type(exc).__name__}: {exc}") from None




__all__ = ["KV_CACHE_DTYPE", "CHECKPOINT_ENV", "CheckpointError", "CheckpointInfo", "check_quantization_config",
           "inspect_checkpoint", "check_config", "spec_for", "smollm_spec_for", "required_capabilities",
           "resolve_checkpoint", "checkpoint_from_env", "load_tokenizer"]
