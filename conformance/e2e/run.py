"""The end-to-end run [E2E-1..3]: a real model built with dummy weights, reloaded from an FP8-KV checkpoint.

``run_reload`` takes an adapter, a checkpoint directory and a device, and:

1. inspects the checkpoint (``checkpoints.inspect_checkpoint``; nothing is built before that);
2. builds the model of the checkpoint's spec through the adapter (the spec's ``quant_method``
   is the checkpoint's, ``kv_cache_dtype`` is ``fp8_e4m3``), dummy-loads it, reloads the
   checkpoint directory and exports the kernel state;
3. scores the perplexity of ``TEXT`` after ``PREFIX`` with ``forward`` on the same device
   (on CUDA the forward runs there, FP8 linears through ``torch._scaled_mm``), and compares
   every k/v, weight and static input scale of the file with the exported one
   (``scales.expected_scales``: a loader that silently uses 1.0 fails even where the
   perplexity stays low);
4. optionally first-loads the same checkpoint into a second model and compares the two
   kernel states bit for bit and the two perplexities.

``run_producer`` does this on the embedded SmolLM2-135M quantized in one producer's layout
(``quantized_cache``); ``run_check`` runs every case of the suite. Results keep perplexities,
exported KV scales, the reloaded-vs-fresh differences and per-step seconds, not the kernel
states (``keep_states=True`` keeps them).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loadspec.conformance.assertions import state_differences
from loadspec.conformance.e2e.checkpoints import (
    CheckpointInfo,
    KVValue,
    inspect_checkpoint,
    load_tokenizer,
    smollm_spec_for,
    spec_for,
)
from loadspec.conformance.e2e.forward import perplexity
from loadspec.conformance.e2e.quantized_cache import quantized_checkpoint, smollm_checkpoint
from loadspec.conformance.e2e.scales import expected_scales, scale_mismatches
from loadspec.conformance.e2e.spec_inference import HF_QUANT_CONFIG
from loadspec.conformance.e2e.threads import cpu_threads
from loadspec.reference.kv_cache import MissingKVScalesWarning
from loadspec.reference.spec import ModelSpec
from loadspec.reference.vocabulary import FORMAT_ACTIVATION_SCHEMES
from loadspec.strategies.producers import PRODUCERS

TEXT = "The capital of France is the city of Paris"
PREFIX = "The capital of France is"
MAX_PERPLEXITY = 10.0  # E2E-1
BLOWUP_PERPLEXITY = 1000.0  # E2E-3
BROKEN_SCALE_MULTIPLIER = 1 / 16  # E2E-3: K and V saturate at +-448

# Every producer layout the NAMES rules cover that the quantizer writes for a real checkpoint.
PRODUCER_IDS = ("compressed-tensors", "compressed-tensors-legacy", "modelopt", "modelopt-fp8-attention", "quark",
                "autofp8", "legacy-kv-scale", "fused-qkv")
# The cases the suite runs: (producer, weight strategy).
CASES = tuple((producer, "tensor") for producer in PRODUCER_IDS) + (("compressed-tensors", "channel"),)
BROKEN_CASE = ("compressed-tensors", "tensor")


@dataclass
class E2EResult:
    """What one end-to-end run measured. States are kept only with ``keep_states=True``."""

    checkpoint: Path
    spec: ModelSpec
    device: str
    perplexity: float  # after dummy load + reload
    kv_scales: tuple[tuple[KVValue, KVValue], ...]  # exported (k, v) per layer after the reload (per head: tuples)
    checkpoint_kv_scales: tuple[tuple[KVValue, KVValue], ...]  # what the checkpoint says they must be
    fresh_perplexity: float | None = None  # after a first load of the same checkpoint
    differences: dict[str, str] | None = None  # reloaded vs fresh kernel state, name -> how it differs
    timings: dict[str, float] = field(default_factory=dict)
    compared_names: tuple[str, ...] = ()  # the scales compared with the file (scales.expected_scales)
    scale_differences: tuple[tuple[str, str, str], ...] = ()  # (name, exported, file's) of those that differ
    producer_id: str | None = None
    weight_strategy: str | None = None
    scale_multiplier: float = 1.0
    reloaded_state: dict | None = None
    fresh_state: dict | None = None

    def kv_scale_mismatches(self) -> list[tuple[str, float, float]]:
        """``(name, exported, checkpoint's)`` for every exported k/v scale that is not the checkpoint's (per-head
        scales one entry per differing head, ``name[h]``; a missing head reads NaN)."""
        out: list[tuple[str, float, float]] = []
        for index, (got, expected) in enumerate(zip(self.kv_scales, self.checkpoint_kv_scales, strict=False)):
            for kind, a, b in zip(("k_scale", "v_scale"), got, expected, strict=False):
                name = self.spec.attention_prefix(index) + kind
                if isinstance(a, float) and isinstance(b, float):
                    if a != b:
                        out.append((name, a, b))
                    continue
                a_heads = a if isinstance(a, tuple) else (a,)
                b_heads = b if isinstance(b, tuple) else (b,)
                for head in range(max(len(a_heads), len(b_heads))):
                    x = a_heads[head] if head < len(a_heads) else math.nan
                    y = b_heads[head] if head < len(b_heads) else math.nan
                    if x != y:
                        out.append((f"{name}[{head}]", x, y))
        return out

    def scale_mismatches(self) -> list[tuple[str, str, str]]:
        """``(name, exported, file's)`` for every compared scale (k/v, weight, static input) that differs [E2E-1]."""
        return list(self.scale_differences)

    @property
    def scales_compared(self) -> str:
        """How many scales of each kind were compared with the file, e.g. ``60 kv, 120 weight, 120 input``."""
        counts = {kind: sum(name.endswith(suffix) for name in self.compared_names)
                  for kind, suffix in (("kv", ("k_scale", "v_scale")), ("q", ".q_scale"), ("weight", "weight_scale"),
                                       ("input", "input_scale"))}
        return ", ".join(f"{count} {kind}" for kind, count in counts.items() if count or kind != "q")

    def measured(self) -> str:
        """One line for the report's E2E rows: what was measured on which checkpoint and device [E2E-1, E2E-2]."""
        fresh = "" if self.fresh_perplexity is None else f", fresh load {self.fresh_perplexity:.4f}"
        return (f"{self.label()} on {self.device}: perplexity after dummy load + reload {self.perplexity:.4f}{fresh}; "
                f"scales compared with the file: {self.scales_compared}, {len(self.scale_differences)} differ")

    def label(self) -> str:
        if self.producer_id is None:
            return str(self.checkpoint)
        extra = "" if self.scale_multiplier == 1.0 else f", KV scales x{self.scale_multiplier:g}"
        if self.spec.static_input_scales and FORMAT_ACTIVATION_SCHEMES.get(self.spec.quant_method or "") != "static":
            extra += ", static inputs"
        return f"{self.producer_id} ({self.weight_strategy}{extra})"


def exported_kv_scales(state: dict[str, torch.Tensor], spec: ModelSpec) -> tuple[tuple[KVValue, KVValue], ...]:
    """Per layer ``(k_scale, v_scale)`` of an exported kernel state: a float, or one per KV head (NaN where absent)."""
    def value(name):
        if name not in state:
            return math.nan
        values = tuple(float(x) for x in state[name].detach().cpu().float().reshape(-1))
        return values[0] if len(values) == 1 else values

    return tuple((value(spec.attention_prefix(i) + "k_scale"), value(spec.attention_prefix(i) + "v_scale"))
                 for i in range(len(spec.layers)))


def checkpoint_config(adapter, info: CheckpointInfo):
    """The adapter's ``checkpoint_quantization_config(qconfig)`` context when it has one (an engine that builds its
    quantization config from the checkpoint's own ``quantization_config``, e.g. vLLM's ``from_config``), else none."""
    hook = getattr(adapter, "checkpoint_quantization_config", None)
    if hook is None:
        return contextlib.nullcontext()
    qconfig = info.config.get("quantization_config")
    hf_file = info.path / HF_QUANT_CONFIG
    if not qconfig and hf_file.is_file():  # ModelOpt's own file, which vLLM's ModelOptFp8Config.from_config reads
        qconfig = json.loads(hf_file.read_text())
    return hook(qconfig)


def load_kernel_state(adapter, spec: ModelSpec, checkpoint: str | Path, *, device: str = "cpu"
                      ) -> dict[str, torch.Tensor]:
    """Build ``spec`` through ``adapter``, first-load ``checkpoint`` and export the kernel state [LOAD-3]."""
    model = adapter.build_model(spec, device=device)
    adapter.first_load(model, Path(checkpoint))
    return adapter.export_kernel_state(model)


def _dummy_load(adapter, model) -> None:
    """The adapter's dummy load; the reference's warning that dummy weights carry no KV scales is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingKVScalesWarning)
        adapter.dummy_load(model)


def run_reload(adapter, checkpoint: str | Path, *, device: str = "cpu", spec: ModelSpec | None = None,
               info: CheckpointInfo | None = None, tokenizer=None, fresh: bool = True,
               keep_states: bool = False, own_config: bool = True) -> E2EResult:
    """Dummy-load, reload ``checkpoint``, export, score [E2E-1]; with ``fresh``, compare to a first load [E2E-2].

    ``spec`` defaults to ``spec_for`` the checkpoint's config; ``tokenizer`` to the
    checkpoint's own. Raises ``CheckpointError`` before building anything when the
    checkpoint cannot be scored. With ``own_config`` an adapter that can build from the
    checkpoint's own ``quantization_config`` (``checkpoint_config``) does.
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
    with cpu_threads(device), (checkpoint_config(adapter, info) if own_config else contextlib.nullcontext()):
        return _run(adapter, checkpoint, device=device, spec=spec or spec_for(info), info=info, tokenizer=tokenizer,
                    fresh=fresh, keep_states=keep_states, timings=timings, lap=lap)


def _run(adapter, checkpoint: Path, *, device, spec, info, tokenizer, fresh, keep_states, timings, lap) -> E2EResult:
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
    expected = expected_scales(checkpoint, spec, info.kv_scales, info.q_scales)
    result.compared_names = tuple(expected)
    result.scale_differences = tuple(scale_mismatches(state, expected))
    lap("compare_scales")
    if fresh:
        fresh_state = load_kernel_state(adapter, spec, checkpoint, device=device)
        lap("fresh_load")
        result.fresh_perplexity = score(fresh_state)
        lap("fresh_perplexity")
        result.differences = state_differences(state, fresh_state)
        lap("compare")
        if keep_states:
            result.fresh_state = fresh_state
    if keep_states:
        result.reloaded_state = state
    timings["total"] = sum(timings.values())
    return result


def run_producer(adapter, producer_id: str, *, device: str = "cpu", weight_strategy: str = "tensor",
                 scale_multiplier: float = 1.0, fresh: bool = True, keep_states: bool = False,
                 activation_scheme: str | None = None) -> E2EResult:
    """``run_reload`` on SmolLM2 quantized in ``producer_id``'s layout (cached), built from ``smollm_spec``;
    ``activation_scheme="static"`` quantizes static W8A8 (``None``: the format's own)."""
    start = time.perf_counter()
    checkpoint = quantized_checkpoint(producer_id, weight_strategy=weight_strategy,
                                      scale_multiplier=scale_multiplier, activation_scheme=activation_scheme)
    quantize = time.perf_counter() - start
    info = inspect_checkpoint(checkpoint)
    expected = PRODUCERS[producer_id].quant_method
    if info.quant_method != expected:
        raise RuntimeError(f"{checkpoint}: quant_method={info.quant_method!r}, but producer {producer_id!r} "
                           f"writes {expected!r}")
    # the SmolLM2 cases keep the adapter's own config for their spec: the fixture configs of strategies.producers
    # are not all what the real tools write (Quark's layer_quant_config entries lack weight/input_tensors, which
    # vLLM's QuarkConfig.get_quant_method reads), so passing them through would test the fixture, not the loader
    result = run_reload(adapter, checkpoint, device=device, spec=smollm_spec_for(info), info=info,
                        tokenizer=load_tokenizer(smollm_checkpoint()), fresh=fresh, keep_states=keep_states,
                        own_config=False)
    result.producer_id, result.weight_strategy, result.scale_multiplier = producer_id, weight_strategy, scale_multiplier
    result.timings = {"quantized_checkpoint": quantize, **result.timings}
    result.timings["total"] += quantize
    return result


def run_check(adapter, *, device: str = "cpu", cases=CASES, broken_case=BROKEN_CASE,
              activation_scheme: str | None = None) -> list[E2EResult]:
    """Every SmolLM2 case of the suite: each (producer, strategy) with a fresh-load comparison, then the /16 one;
    ``activation_scheme="static"`` quantizes every case static W8A8."""
    results = [run_producer(adapter, producer, device=device, weight_strategy=strategy,
                            activation_scheme=activation_scheme) for producer, strategy in cases]
    if broken_case is not None:
        producer, strategy = broken_case
        results.append(run_producer(adapter, producer, device=device, weight_strategy=strategy,
                                    scale_multiplier=BROKEN_SCALE_MULTIPLIER, fresh=False,
                                    activation_scheme=activation_scheme))
    return results


__all__ = ["TEXT", "PREFIX", "MAX_PERPLEXITY", "BLOWUP_PERPLEXITY", "BROKEN_SCALE_MULTIPLIER", "PRODUCER_IDS", "CASES",
           "BROKEN_CASE", "E2EResult", "exported_kv_scales", "load_kernel_state", "run_reload", "run_producer",
           "run_check", "checkpoint_config"]
