"""What the reload benchmarks share: model sizes, checkpoints in pinned host memory, timers, ceilings, memory.

Every figure is taken the same way on every adapter: the adapter's own ``build_model`` /
``first_load`` / ``reload`` / ``open_reload`` on a ``ModelSpec``, checkpoint tensors already in
(pinned, on CUDA) host memory, the device synchronized before and after each timed call.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from loadspec.reference.model import checkpoint_mapper
from loadspec.reference.spec import LayerSpec, ModelSpec
from loadspec.strategies.synthetic import synthetic_checkpoint

GIB = 2**30
MIB = 2**20
DELAY_ENV_VAR = "LOADSPEC_BENCH_DELAY_US"  # an artificial per-tensor delay: shows a compare failing

Weights = list[tuple[str, torch.Tensor]]


# -------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Dims:
    """A decoder shape: Llama-8B is hidden 4096, 32 heads of 128, 8 KV heads, intermediate 14336."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layers: int


@dataclass(frozen=True)
class Size:
    """One benchmark size: ``quick`` (CI: checks it works), ``medium`` (CPU ratios), ``full`` (>= 1 GiB, GPU)."""

    throughput: Dims  # the throughput, delivery and first-load cases
    small_layers: int  # layers of the many-small-tensors model (11 tensors a layer, 3 more)
    count_points: tuple[int, ...]  # layer counts of the small model: reload time vs tensor count
    bytes_points: tuple[int, ...]  # hidden sizes of a 2-layer model: reload time vs bytes
    bucket_mib: int
    rounds: int
    warmup: int = 1


SIZES = {
    "quick": Size(Dims(64, 224, 4, 2, 16, 256, 2), small_layers=8, count_points=(2, 4, 6, 8),
                  bytes_points=(32, 48, 64, 96), bucket_mib=1, rounds=1, warmup=0),
    "medium": Size(Dims(1024, 3584, 8, 2, 128, 8192, 4), small_layers=96, count_points=(12, 24, 48, 96),
                   bytes_points=(256, 512, 768, 1024), bucket_mib=16, rounds=3),
    "full": Size(Dims(4096, 14336, 32, 8, 128, 32768, 4), small_layers=96, count_points=(12, 24, 48, 96),
                 bytes_points=(1024, 2048, 3072, 4096), bucket_mib=256, rounds=5),
}

QUANTS = {"fp8_per_tensor": "fp8_per_tensor", "fp8_per_channel": "fp8_per_channel", "bf16": "none"}
CAPABILITIES_OF = {"fp8_per_tensor": ("model", "fp8_per_tensor", "reduced_precision_params"),
                   "fp8_per_channel": ("model", "fp8_per_channel", "reduced_precision_params"),
                   "bf16": ("model", "reduced_precision_params")}


def llama_spec(dims: Dims, quant: str = "none", *, params_dtype: str = "bfloat16") -> ModelSpec:
    """A Llama-shaped model: every linear under ``quant``, FP8 KV cache with k/v scales."""
    layer = LayerSpec(qkv_quant=quant, o_quant=quant, gate_up_quant=quant, down_quant=quant)
    return ModelSpec(layers=(layer,) * dims.layers, vocab_size=dims.vocab, hidden_size=dims.hidden,
                     num_heads=dims.heads, num_kv_heads=dims.kv_heads, head_dim=dims.head_dim,
                     intermediate_size=dims.intermediate, params_dtype=params_dtype, kv_cache_dtype="fp8_e4m3",
                     quant_method="fp8")


def small_tensors_spec(layers: int) -> ModelSpec:
    """Many tiny tensors (hidden 16): what a reload costs per tensor, bytes aside."""
    return llama_spec(Dims(16, 32, 2, 1, 8, 32, layers), params_dtype="float32")


def bytes_spec(hidden: int) -> ModelSpec:
    """Two FP8 per-tensor layers of ``hidden`` (Llama proportions): the same tensor count, more bytes."""
    return llama_spec(Dims(hidden, hidden * 7 // 2, max(1, hidden // 128), max(1, hidden // 512), 128,
                           4 * hidden, 2), "fp8_per_tensor")


# ----------------------------------------------------------------- devices
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def device_description(device: str) -> dict[str, str]:
    """``{"device": ...}``, plus the GPU's name and CUDA version on CUDA."""
    if device != "cuda":
        return {"device": device, "cpu_threads": str(torch.get_num_threads())}
    return {"device": device, "gpu": torch.cuda.get_device_name(), "cuda": str(torch.version.cuda)}


def checkpoint(spec: ModelSpec, device: str, *, seed: int = 0) -> Weights:
    """``synthetic_checkpoint(spec)`` as a list, each tensor contiguous and, on CUDA, in pinned host memory."""
    weights = [(name, tensor.contiguous()) for name, tensor in synthetic_checkpoint(spec, seed=seed).items()]
    if device == "cuda":
        weights = [(name, tensor.pin_memory()) for name, tensor in weights]
    return weights


def nbytes(weights: Iterable[tuple[str, torch.Tensor]]) -> int:
    return sum(tensor.nbytes for _, tensor in weights)


def delivered(weights: Weights) -> Iterable[tuple[str, torch.Tensor]]:
    """``weights`` as the adapter gets them: as is, or with ``$LOADSPEC_BENCH_DELAY_US`` of busy wait before each
    tensor (an artificially slowed reload, to show a regression compare failing)."""
    delay = float(os.environ.get(DELAY_ENV_VAR, "0") or 0) * 1e-6
    if not delay:
        return weights
    return _slowly(weights, delay)


def _slowly(weights: Weights, delay: float) -> Iterator[tuple[str, torch.Tensor]]:
    for item in weights:
        end = time.perf_counter() + delay
        while time.perf_counter() < end:
            pass
        yield item


def buckets(weights: Weights, mib: int) -> list[Weights]:
    """``weights`` in order, cut into buckets of at most ``mib`` MiB (a tensor larger than that is a bucket alone):
    how verl and slime send an update."""
    out: list[Weights] = [[]]
    size = 0
    for item in weights:
        if out[-1] and size + item[1].nbytes > mib * MIB:
            out.append([])
            size = 0
        out[-1].append(item)
        size += item[1].nbytes
    return out


def shuffled(weights: Weights, seed: int = 0) -> Weights:
    order = list(weights)
    random.Random(seed).shuffle(order)
    return order


# ------------------------------------------------------------------- timing
def timed_rounds(benchmark, fn: Callable[[], Any], device: str, *, rounds: int, warmup: int,
                 setup: Callable[[], tuple] | None = None) -> float:
    """Run ``fn`` under pytest-benchmark (``pedantic``, one iteration a round) and return the median seconds of
    the timed rounds, as this harness measured them (device synchronized around each call).

    With ``--benchmark-disable`` pytest-benchmark calls ``fn`` once: that one time is returned.
    """
    times: list[float] = []

    def target(*args):
        sync(device)
        start = time.perf_counter()
        fn(*args)
        sync(device)
        times.append(time.perf_counter() - start)

    if setup is None:
        benchmark.pedantic(target, rounds=rounds, iterations=1, warmup_rounds=warmup)
    else:
        benchmark.pedantic(target, setup=lambda: (setup(), {}), rounds=rounds, warmup_rounds=warmup)
    return statistics.median(times[-rounds:])


def median_time(fn: Callable[[], Any], device: str, *, rounds: int, warmup: int) -> float:
    """Median seconds of ``fn`` over ``rounds`` after ``warmup`` calls, device synchronized around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, rounds)):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_loop(weights: Weights, device: str) -> Callable[[], None]:
    """A plain ``copy_`` of every checkpoint tensor into a preallocated tensor of its shape on ``device``."""
    targets = [(torch.empty(tensor.shape, dtype=tensor.dtype, device=device), tensor) for _, tensor in weights]

    def run() -> None:
        for destination, source in targets:
            destination.copy_(source, non_blocking=device == "cuda")

    return run


def ceiling(weights: Weights, device: str) -> tuple[str, Callable[[], object]]:
    """The fastest plain move of the checkpoint's bytes: on CUDA one pinned host-to-device copy of a buffer
    of the same size; on CPU a ``copy_`` loop over the same tensors."""
    if device != "cuda":
        return "copy_ loop over the same tensors", copy_loop(weights, device)
    total = nbytes(weights)
    source = torch.empty(total, dtype=torch.uint8).pin_memory()
    source.random_(0, 255)
    destination = torch.empty(total, dtype=torch.uint8, device=device)
    return "one pinned host-to-device copy of the same bytes", lambda: destination.copy_(source, non_blocking=True)


# ------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory above the start during the ``with`` block: device memory on CUDA
    (``torch.cuda.max_memory_allocated``), resident set size sampled every 0.5 ms on CPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.extra = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        gc.collect()
        sync(self.device)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = self._peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.0005):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc_info) -> None:
        sync(self.device)
        if self.device == "cuda":
            self.extra = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.extra = self._peak - self._base


def state_bytes(adapter, model) -> int:
    """Bytes of the model's live kernel tensors."""
    return sum(tensor.nbytes for tensor in adapter.kernel_tensors(model).values())


def largest_layer_bytes(spec: ModelSpec, weights: Weights) -> int:
    """Checkpoint bytes of the largest layer (fused projections together: ``q/k/v_proj`` are one ``qkv_proj``),
    the bound issue 12 sets on a reload's peak extra memory for in-order delivery."""
    mapper = checkpoint_mapper(spec)
    per_layer: dict[str, int] = {}
    for name, tensor in weights:
        mapped = mapper.map_name_with_shard(name)
        layer = (mapped[0] if mapped else name).rsplit(".", 1)[0]
        per_layer[layer] = per_layer.get(layer, 0) + tensor.nbytes
    return max(per_layer.values(), default=0)


# ------------------------------------------------------------------ results
@dataclass
class Result:
    """One benchmark case's figures, as the loadspec summary records them."""

    case: str  # throughput | per_tensor | scaling_tensors | scaling_bytes | delivery | first_load
    variant: str
    tensors: int
    bytes: int
    seconds: float
    ceiling_seconds: float | None = None
    ceiling: str = ""
    peak_extra_bytes: int | None = None
    state_bytes: int | None = None
    correct: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    largest_layer_bytes: int | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"case": self.case, "variant": self.variant, "tensors": self.tensors,
                               "bytes": self.bytes, "seconds": self.seconds,
                               "gib_s": self.bytes / GIB / self.seconds if self.seconds else None}
        if self.ceiling_seconds:
            out.update(ceiling=self.ceiling, ceiling_seconds=self.ceiling_seconds,
                       ceiling_gib_s=self.bytes / GIB / self.ceiling_seconds,
                       ratio=self.ceiling_seconds / self.seconds,  # reload throughput / ceiling throughput
                       overhead_us_per_tensor=(self.seconds - self.ceiling_seconds) / self.tensors * 1e6)
        if self.peak_extra_bytes is not None:
            out["peak_extra_bytes"] = self.peak_extra_bytes
            if self.state_bytes:
                out.update(state_bytes=self.state_bytes, peak_extra_fraction=self.peak_extra_bytes / self.state_bytes)
            if self.largest_layer_bytes:
                out.update(largest_layer_bytes=self.largest_layer_bytes,
                           peak_extra_per_largest_layer=self.peak_extra_bytes / self.largest_layer_bytes)
        if self.correct is not None:
            out["correct"] = self.correct
        return {**out, **self.extra}


RESULTS: list[Result] = []  # filled by the benchmark tests, written by the conftest at the end of the session
