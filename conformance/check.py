"""``loadspec check PATH_OR_HUB_ID``: what a loader would make of a checkpoint's KV-cache and linear scales.

Reads the shard headers (validated by ``loadspec.reference.checkpoint``) and ``config.json``;
reads tensor data only for scale tensors of at most ``MAX_SCALE_NUMEL`` elements, never weights.
The config is read as engines read it (``e2e.spec_inference``: weights per tensor or channel,
static or dynamic activations, the KV-scale strategy, ``ignore``, the dtype; every unknown or
unsupported field is a problem). Every KV-cache scale is resolved by the reference's cache-scale
mapper (or an adapter's, with ``--impl``) and judged as the reference loader judges it: one
element (one per KV head for ``attn_head``), finite, > 0, not the ``-1.0`` sentinel. The linear
summary counts per-tensor/per-channel weight scales and static input scales (each checked
against the config's activation scheme). Every problem is reported at once. Exit codes: 0 loads cleanly, 1 problems,
2 unreadable input (not a checkpoint directory, a bad header, an unknown ``--impl``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadspec.conformance import selection
from loadspec.conformance.e2e.checkpoints import CheckpointError, resolve_checkpoint
from loadspec.conformance.e2e.spec_inference import Scheme, SchemeError, kv_strategy_hint, read_scheme
from loadspec.reference.cache_scale_mappers import cache_scale_mapper
from loadspec.reference.checkpoint import Checkpoint, open_checkpoint, read_config
from loadspec.reference.errors import CheckpointFormatError
from loadspec.reference.vocabulary import SCALE_KINDS, SENTINEL
from loadspec.strategies.producers import PRODUCERS

MAX_SCALE_NUMEL = 4096
"""Scale tensors up to this many elements are read (to show values); larger ones are judged by header only."""
_CANONICAL = re.compile(r"^(?P<prefix>.*\.(?:self_attn|mixer))\.attn\.(?P<kind>q|k|v|prob)_scale$")
_CONTAINER = re.compile(r"^(?P<prefix>.*\.(?:self_attn|mixer))\.(?P<rest>.+)$")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class UnreadableInput(Exception):
    """The input is not a readable checkpoint directory (exit code 2)."""


@dataclass
class ScaleRow:
    """One KV-cache scale of one layer: where it comes from and what a loader does with it."""

    layer: int | None
    kind: str
    canonical: str
    checkpoint_name: str | None
    shape: list[int] | None = None
    dtype: str | None = None
    value: float | None = None
    outcome: str = "loads"  # "loads", "loads (per head)", "defaults to 1.0", "follows k_scale", "rejected"
    why: str = ""
    values: list[float] | None = None  # per KV head (attn_head)

    def line(self) -> str:
        source = self.checkpoint_name or "(absent)"
        shown = (f" value={self.value:g}" if self.value is not None else
                 " values=[" + ", ".join(f"{v:g}" for v in self.values) + "]" if self.values else "")
        found = "" if self.shape is None else f"shape={tuple(self.shape)} {self.dtype}{shown}"
        outcome = self.outcome + (f" ({self.why})" if self.why else "")
        return f"    {source} -> {self.canonical} -> {found or '-'} -> {outcome}"


@dataclass
class Report:
    """What ``loadspec check`` found; ``exit_code`` 0 (clean) or 1 (problems)."""

    path: str
    quant_method: str | None
    producers: list[str]
    scheme: dict[str, Any]
    mapper: str
    scales: list[ScaleRow] = field(default_factory=list)
    linear: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # spec_inference.Scheme.summary(): weights, activations...

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0

    def to_json(self) -> str:
        return json.dumps(dict(asdict(self), exit_code=self.exit_code), indent=2, default=str)

    def text(self) -> str:
        lines = [f"checkpoint: {self.path}",
                 f"producer:   {', '.join(self.producers) or 'unknown'} (quant_method={self.quant_method})",
                 "scheme:     " + ", ".join(f"{k}={v}" for k, v in self.scheme.items()),
                 "reads as:   " + (", ".join(f"{k}={v}" for k, v in self.config.items() if k != "quant_method")
                                   or "unsupported (see the problems)"),
                 f"mapper:     {self.mapper}", "KV-cache scales:"]
        layers = sorted({row.layer for row in self.scales}, key=lambda x: (x is None, x or 0))
        for layer in layers:
            lines.append(f"  layer {layer}:" if layer is not None else "  (no layer):")
            lines.extend(row.line() for row in self.scales if row.layer == layer)
        if not self.scales:
            lines.append("  none")
        lines.append("linear scales: " + ", ".join(f"{k}={v}" for k, v in self.linear.items()))
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines.extend(f"  - {p}" for p in self.problems)
        else:
            lines.append("loads cleanly")
        return "\n".join(lines)


def _scheme(qconfig: dict[str, Any]) -> dict[str, Any]:
    """The scheme fields of a ``quantization_config`` that decide how scales load."""
    method = qconfig.get("quant_method")
    out: dict[str, Any] = {}
    if method == "compressed-tensors":
        for group_name, group in sorted((qconfig.get("config_groups") or {}).items()):
            if not isinstance(group, dict):
                continue
            weights = group.get("weights") or {}
            inputs = group.get("input_activations") or {}
            out[f"{group_name}.weights"] = weights.get("strategy")
            out[f"{group_name}.input_activations"] = (
                None if not inputs else ("dynamic" if inputs.get("dynamic", True) else "static"))
        kv = qconfig.get("kv_cache_scheme")
        out["kv_cache_scheme"] = kv.get("strategy") if isinstance(kv, dict) else kv
    elif method == "fp8":
        out.update(activation_scheme=qconfig.get("activation_scheme"), kv_cache_scheme=qconfig.get("kv_cache_scheme"))
    elif method == "modelopt":
        out.update(quant_algo=qconfig.get("quant_algo"), kv_cache_quant_algo=qconfig.get("kv_cache_quant_algo"))
    elif method == "quark":
        weight = (qconfig.get("global_quant_config") or {}).get("weight") or {}
        out.update(weight=weight.get("qscheme"), kv_cache_group=(qconfig.get("export") or {}).get("kv_cache_group"))
    return out


def _producers(quant_method: str | None, suffixes: set[str]) -> list[str]:
    """Producers in the table whose names cover every KV-scale name found (and whose quant_method matches)."""
    return [p.id for p in PRODUCERS.values() if suffixes and suffixes <= set(p.scale_names.values())
            and (quant_method is None or p.quant_method == quant_method)]


def _judge(row: ScaleRow, checkpoint: Checkpoint, name: str, heads: int | None = None) -> None:
    """Fill ``row`` from tensor ``name``'s header (and data, when small): loads or rejected, and why.

    ``heads`` is the KV-head count when the config asks for ``attn_head`` scales: the tensor must then hold one
    value per head (``(heads, 1, 1)`` as compressed-tensors writes it) [HEADS-1]; else exactly one element."""
    info = checkpoint.tensors[name]
    row.shape, row.dtype = list(info.shape), info.dtype_code
    want = 1 if heads is None or row.kind not in ("k", "v") else heads
    if info.numel != want:
        row.outcome = "rejected"
        if heads is not None and row.kind in ("k", "v"):
            row.why = (f"{info.numel} element(s), but kv_cache_scheme.strategy=attn_head needs one per KV head "
                       f"({heads}, e.g. shape ({heads}, 1, 1))")
        else:
            row.why = (f"more than one element ({info.numel}): only per-tensor KV-cache scales load" if info.numel
                       else "no element: a KV-cache scale must have exactly one")
        return
    if not info.dtype.is_floating_point:
        row.outcome, row.why = "rejected", f"dtype {info.dtype_code} is not a floating-point type"
        return
    values = [float(x) for x in checkpoint.read(name).float().reshape(-1)]
    row.value = values[0] if want == 1 else None
    row.values = values if want > 1 else None
    if want > 1:
        row.outcome = "loads (per head)"
    if not all(math.isfinite(x) for x in values):
        row.outcome, row.why = "rejected", "non-finite"
    elif SENTINEL in values:
        row.outcome, row.why = "rejected", f"{SENTINEL} is the not-loaded sentinel"
    elif any(x <= 0 for x in values):
        row.outcome, row.why = "rejected", "<= 0"


def _linear(report: Report, checkpoint: Checkpoint, scheme: Scheme | None) -> None:
    """The linear-scale summary: FP8 weights, per-tensor/per-channel scales, static input scales (with their
    range), scale dtypes; a problem for each FP8 weight without its scale, each ``input_scale`` the config does
    not ask for (or missing where it does) [STATIC-1], each bad value."""
    headers = checkpoint.tensors
    static_inputs = scheme is not None and scheme.static_inputs
    counts: dict[str, Any] = {"fp8_weights": 0, "per_tensor": 0, "per_channel": 0, "input_scales": 0}
    dtypes: set[str] = set()
    inputs: list[float] = []
    for name, info in sorted(headers.items()):
        if name.endswith(".weight") and info.dtype_code.startswith("F8"):
            counts["fp8_weights"] += 1
            if name[:-len("weight")] + "weight_scale" not in headers:
                report.problems.append(f"{name}: FP8 weight without a weight_scale")
            if static_inputs and name[:-len("weight")] + "input_scale" not in headers:
                report.problems.append(f"{name}: the config says static activations, but no input_scale")
        elif name.endswith(".weight_scale"):
            counts["per_tensor" if info.numel == 1 else "per_channel"] += 1
            dtypes.add(info.dtype_code)
        elif name.endswith(".input_scale"):
            counts["input_scales"] += 1
            dtypes.add(info.dtype_code)
            if scheme is not None and not static_inputs:
                report.problems.append(f"{name}: static input_scale, but the config says "
                                       f"{scheme.activation_scheme or 'weight-only'} activations (no parameter "
                                       f"loads it)")
            if info.numel <= MAX_SCALE_NUMEL:
                values = checkpoint.read(name).float()
                inputs += values.reshape(-1).tolist()
                if not bool(values.isfinite().all()) or bool((values <= 0).any()):
                    report.problems.append(f"{name}: input_scale not finite and > 0")
    if inputs:
        finite = [v for v in inputs if math.isfinite(v)]
        counts["input_scale_range"] = f"{min(finite):.4g}..{max(finite):.4g}" if finite else "non-finite"
        counts["static_inputs"] = ("applied (fused shards: the largest, as vLLM processes them)" if static_inputs
                                   else "unknown (the config could not be read)" if scheme is None
                                   else "not loaded (the config does not say static)")
    counts["scale_dtypes"] = "/".join(sorted(dtypes)) or "-"
    report.linear = counts


def check(path: Path, *, impl: str | None = None) -> Report:
    """Check checkpoint directory ``path``; raise ``UnreadableInput`` when it is not a readable checkpoint."""
    try:
        checkpoint = open_checkpoint(path)
        config = read_config(path)
    except CheckpointFormatError as exc:
        raise UnreadableInput(f"not a readable checkpoint directory: {exc}") from None
    qconfig = config.get("quantization_config")
    qconfig = qconfig if isinstance(qconfig, dict) else {}
    scheme: Scheme | None = None
    scheme_problems: list[str] = []
    try:
        scheme = read_scheme(path, config)
    except SchemeError as exc:
        scheme_problems = [f"{exc.where}: {problem}" for problem in exc.problems]
    # ModelOpt's hf_quant_config.json stands in for a missing quantization_config, as in vLLM
    method = qconfig.get("quant_method") or (scheme.quant_method if scheme is not None else None)
    if impl is None:
        reference = cache_scale_mapper()

        def mapped(name: str) -> str | None:
            return reference.map_name(name)
        mapper_name = "reference cache_scale_mapper()"
    else:
        try:
            adapter = selection.resolve(selection.chosen_name(impl))
            engine_mapper = adapter.cache_scale_mapper(method or "")
        except Exception as exc:  # noqa: BLE001 - named in the message
            raise UnreadableInput(f"--impl {impl}: {type(exc).__name__}: {exc}") from None

        def mapped(name: str) -> str | None:
            out = adapter.map_name(engine_mapper, name)
            return None if out is None else out[0]
        mapper_name = f"{impl} cache_scale_mapper({method!r})"

    found: dict[str, list[str]] = {}  # canonical -> checkpoint names
    suffixes: set[str] = set()
    for name in checkpoint.tensors:
        target = mapped(name)
        if target is None or not _CANONICAL.match(target):
            continue
        found.setdefault(target, []).append(name)
        container = _CONTAINER.match(name)
        if container:
            suffixes.add(container.group("rest"))
    report = Report(path=str(path), quant_method=method, producers=_producers(method, suffixes),
                    scheme=_scheme(qconfig), mapper=mapper_name)
    report.problems += scheme_problems
    if scheme is not None:
        report.config = scheme.summary()
    kv_heads = config.get("num_key_value_heads") or config.get("num_attention_heads")
    heads = kv_heads if kv_strategy_hint(config, scheme) == "attn_head" and isinstance(kv_heads, int) else None
    prefixes = {m.group("prefix") for m in map(_CANONICAL.match, found) if m}
    layers = config.get("num_hidden_layers")
    if isinstance(layers, int) and prefixes:  # layers without any scale get rows too (defaults)
        template = re.sub(r"layers\.\d+\.", "layers.{}.", min(prefixes) + ".")
        if "{}" in template:
            prefixes |= {template.format(i)[:-1] for i in range(layers)}
    for prefix in sorted(prefixes, key=lambda p: (int(m.group(1)) if (m := _LAYER.search(p + ".")) else -1, p)):
        layer_match = _LAYER.search(prefix + ".")
        layer = int(layer_match.group(1)) if layer_match else None
        for kind in SCALE_KINDS:
            canonical = f"{prefix}.attn.{kind}_scale"
            names = found.get(canonical, [])
            row = ScaleRow(layer=layer, kind=kind, canonical=canonical, checkpoint_name=", ".join(names) or None)
            if len(names) > 1:
                row.outcome, row.why = "rejected", f"{len(names)} checkpoint names map to it"
            elif names:
                _judge(row, checkpoint, names[0], heads)
            elif kind == "v" and found.get(f"{prefix}.attn.k_scale"):
                row.outcome, row.why = "follows k_scale", "only k loaded [KVPROC-4]"
            else:
                row.outcome = "defaults to 1.0"
                row.why = "no checkpoint name maps to it"
                if kind == "k" and not found.get(f"{prefix}.attn.v_scale") and method is not None:
                    report.problems.append(f"{canonical}: no k or v scale for this layer: an FP8 KV cache "
                                           f"would use 1.0 (uncalibrated)")
            if row.outcome == "rejected":
                report.problems.append(f"{row.checkpoint_name} -> {canonical}: rejected ({row.why})")
            if names or kind in ("k", "v"):
                report.scales.append(row)
    if found and not method:
        report.problems.append("KV-cache scales but no quantization_config in config.json: an engine would not "
                               "load them")
    _linear(report, checkpoint, scheme)
    _dtype_problems(report, checkpoint, scheme)
    return report


def _dtype_problems(report: Report, checkpoint: Checkpoint, scheme: Scheme | None) -> None:
    """A float tensor (embeddings, norms, unquantized weights) in another dtype than config.json's ``dtype``: the
    model is built in the config's dtype, so such a tensor would be cast on load."""
    if scheme is None:
        return
    want = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[scheme.params_dtype]
    other = sorted(name for name, info in checkpoint.tensors.items() if name.endswith(".weight")
                   and info.dtype_code in ("F32", "BF16", "F16") and info.dtype_code != want)
    if other:
        first = checkpoint.tensors[other[0]].dtype_code
        report.problems.append(f"{len(other)} float weights are not {want} although config.json says "
                               f"dtype={scheme.params_dtype} (e.g. {other[0]}: {first})")


def main(argv: list[str] | None = None) -> int:
    """``loadspec check PATH_OR_HUB_ID [--impl NAME] [--json]``."""
    parser = argparse.ArgumentParser(prog="loadspec check", description=__doc__.split("\n", 1)[0])
    parser.add_argument("checkpoint", help="a checkpoint directory or a Hugging Face Hub id (org/name[@revision])")
    parser.add_argument("--impl", default=None, help="ask this adapter's cache-scale mapper (default: the reference's)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        local = Path(args.checkpoint).expanduser()
        if local.is_dir():
            path = local
        else:
            try:
                path = resolve_checkpoint(args.checkpoint)
            except CheckpointError as exc:
                raise UnreadableInput(str(exc)) from None
        report = check(path, impl=args.impl)
    except UnreadableInput as exc:
        if args.json:
            print(json.dumps({"path": args.checkpoint, "exit_code": 2, "error": str(exc)}))
        else:
            print(f"loadspec check: {args.checkpoint}: {exc}")
        return 2
    print(report.to_json() if args.json else report.text())
    return report.exit_code


__all__ = ["MAX_SCALE_NUMEL", "Report", "ScaleRow", "UnreadableInput", "check", "main"]
