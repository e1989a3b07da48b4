"""The reference as oracle for whole kernel states [LOAD-17, RELOAD-13], and the host-mirror check [LOAD-18, RELOAD-14].

``Twin`` holds one implementation model and one reference model of the same spec and drives
both through the same steps (first load, dummy load, reload, reload session); ``Twin.check``
compares the two exported kernel states. Bytes are compared exactly (NaN equals NaN, FP8
compares bit for bit) except where a ``Tolerance`` names the rule that allows a difference.
Where an engine's export legitimately differs from the reference's (vocabulary padding, a
transposed FP8 layout, a ``(out, 1)`` per-channel scale), the adapter's
``export_kernel_state`` normalizes it (see ``loadspec.conformance.adapter``); the test never does.

A failure reads ``<what>=<per-tensor diff>, but should be <the reference's state> [RULE-ID]``:
each differing tensor with its dtype/shape on both sides, the largest absolute difference and the
first differing index, followed by the recorded reproducer (``conformance/reproducers.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from loadspec.conformance.assertions import fail, tensor_bytes
from loadspec.reference.spec import ModelSpec
from loadspec.reference.vocabulary import CPU_MIRRORS, FLOAT_MIRRORS, FP8_DTYPE
from loadspec.strategies.capabilities import HOST_MIRRORS

__all__ = ["CONTRACT_TOLERANCES", "MIRRORED_SCALE", "REQUANTIZED_SHARDS", "Tolerance",
           "TensorDiff", "Twin", "kernel_state_diffs", "assert_same_as_reference",
           "mirror_differences", "assert_mirrors_match_scales"]


@dataclass(frozen=True)
class Tolerance:
    """An allowed difference for tensors whose name matches ``pattern`` (``re.search``).

    ``atol`` bounds the absolute difference; for FP8 tensors ``fp8_steps`` bounds the distance in
    representable values (1: each element equal or its neighbour; NaN only where the reference has NaN).
    ``rule`` names the rule that allows it; without one there is no tolerance: the contract fixes the bytes.
    """

    pattern: str
    atol: float
    rule: str
    fp8_steps: int = 0

    def applies(self, name: str) -> bool:
        return re.search(self.pattern, name) is not None

    def allows(self, got: torch.Tensor, expected: torch.Tensor) -> bool:
        """Whether ``got`` is within this tolerance of ``expected`` (same dtype and shape)."""
        a, b = got.detach().cpu(), expected.detach().cpu()
        if a.dtype == FP8_DTYPE and self.fp8_steps:
            nan = a.float().isnan().reshape(-1)
            if not torch.equal(nan, b.float().isnan().reshape(-1)):
                return False
            return bool(((_fp8_order(a) - _fp8_order(b)).abs()[~nan] <= self.fp8_steps).all())
        return torch.allclose(a.float(), b.float(), rtol=0.0, atol=self.atol, equal_nan=True)


def _fp8_order(tensor: torch.Tensor) -> torch.Tensor:
    """Each e4m3 element's rank among the representable values (adjacent values differ by 1; +0 and -0 share 0)."""
    bits = tensor.reshape(-1).contiguous().view(torch.uint8).to(torch.int16)
    magnitude = bits & 0x7F
    return torch.where(bits >= 0x80, -magnitude, magnitude)


REQUANTIZED_SHARDS = Tolerance(r"\.(qkv_proj|gate_up_proj)\.weight$", atol=0.0, rule="LOAD-17", fp8_steps=1)
"""LOAD-17/RELOAD-13 allow a fused per-tensor FP8 linear's re-quantized shards one e4m3 step either way
(vLLM dequantizes in float16 before re-quantizing: ``w8a8_utils.per_tensor_dequantize``);
LOAD-20 (SHOULD) allows none."""
CONTRACT_TOLERANCES: tuple[Tolerance, ...] = (REQUANTIZED_SHARDS,)


@dataclass(frozen=True)
class TensorDiff:
    """How one exported tensor differs from the reference's."""

    name: str
    got: str
    """``dtype(shape)`` on the implementation's side, or ``missing``."""
    expected: str
    """``dtype(shape)`` on the reference's side, or ``absent``."""
    max_abs_diff: float | None = None
    first_index: tuple[int, ...] | None = None
    got_value: float | None = None
    expected_value: float | None = None

    def line(self) -> str:
        """One line of the failure message."""
        if self.first_index is None:
            return f"{self.name}: {self.got} vs reference {self.expected}"
        return (f"{self.name} {self.got}: max |diff| {self.max_abs_diff:g}, first at index {list(self.first_index)} "
                f"({self.got_value!r} vs reference {self.expected_value!r})")


class _Shown(str):
    """Text shown as is (not quoted) in the uniform failure message."""

    def __repr__(self) -> str:
        return str(self)


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')}{tuple(tensor.shape)}"


def _first_difference(got: torch.Tensor, expected: torch.Tensor) -> TensorDiff | None:
    """Where two same-dtype, same-shape tensors first differ in their bytes (element-wise), or None."""
    a, b = got.detach().cpu(), expected.detach().cpu()
    if torch.equal(tensor_bytes(a), tensor_bytes(b)):
        return None
    width = a.element_size()
    raw = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[width]
    differs = a.reshape(-1).contiguous().view(raw) != b.reshape(-1).contiguous().view(raw)
    flat = int(differs.nonzero()[0].item())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(a.shape))) if a.dim() else ()
    af, bf = a.float(), b.float()
    both_finite = torch.isfinite(af) & torch.isfinite(bf)
    gap = (af - bf).abs()[both_finite]
    return TensorDiff("", _describe(a), _describe(b), float(gap.max()) if gap.numel() else float("nan"), index,
                      float(af.reshape(-1)[flat]), float(bf.reshape(-1)[flat]))


def kernel_state_diffs(got: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], *,
                       tolerances: Iterable[Tolerance] = ()) -> list[TensorDiff]:
    """Every tensor in which ``got`` differs from ``expected`` (names, dtype, shape or bytes), sorted by name.

    A tensor matched by a ``Tolerance`` passes when that tolerance ``allows`` it.
    """
    tolerances = tuple(tolerances)
    out = []
    for name in sorted(got.keys() | expected.keys()):
        if name not in got:
            out.append(TensorDiff(name, "missing", _describe(expected[name])))
            continue
        if name not in expected:
            out.append(TensorDiff(name, _describe(got[name]), "absent"))
            continue
        a, b = got[name], expected[name]
        if (a.dtype, tuple(a.shape)) != (b.dtype, tuple(b.shape)):
            out.append(TensorDiff(name, _describe(a), _describe(b)))
            continue
        diff = _first_difference(a, b)
        if diff is None:
            continue
        if any(t.applies(name) and t.allows(a, b) for t in tolerances):
            continue
        out.append(TensorDiff(name, diff.got, diff.expected, diff.max_abs_diff, diff.first_index, diff.got_value,
                              diff.expected_value))
    return out


def _reproducer(request: Any) -> str:
    case = getattr(getattr(request, "node", None), "loadspec_case", None)
    if case is None:
        return ""
    return ("\nreproducer (written to <report>/reproducers/<test>/ with replay.py when the test fails):\n"
            + case.summary())


def assert_same_as_reference(what: str, got: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                             rule: str, *, request: Any = None, tolerances: Iterable[Tolerance] = (),
                             limit: int = 12) -> None:
    """The implementation's exported kernel state ``got`` equals the reference's ``expected`` [LOAD-17, RELOAD-13].

    Fails listing up to ``limit`` differing tensors (name, dtype/shape on both sides, max abs diff,
    first differing index and the two values there) and the recorded reproducer of ``request``.
    """
    __tracebackhide__ = True
    diffs = kernel_state_diffs(got, expected, tolerances=tolerances)
    if not diffs:
        return
    listed = [d.line() for d in diffs[:limit]]
    if len(diffs) > limit:
        listed.append(f"... and {len(diffs) - limit} more")
    fail(what, _Shown(f"{len(diffs)} tensor(s) differing from the reference:\n  " + "\n  ".join(listed) + "\n"),
         _Shown("the reference's kernel state, bit for bit" + _reproducer(request)), rule)


MIRRORED_SCALE: dict[str, str] = {**{mirror: scale for scale, mirror in FLOAT_MIRRORS.items()},
                                **{mirror: scale for scale, mirror in CPU_MIRRORS.items()}}
"""Host mirror attribute -> the scale it mirrors: every mirror the contract names [LOAD-18, RELOAD-14]."""

MUST_MIRRORS = tuple(m for m, scale in MIRRORED_SCALE.items() if scale != "prob_scale")
"""The mirrors a MUST rule covers: ``_prob_scale_float`` is KVPROC-11's (a SHOULD: vLLM never refreshes it)."""


def mirror_differences(adapter: Any, model: Any, spec: ModelSpec, *,
                       mirrors: Iterable[str] = MUST_MIRRORS) -> list[str]:
    """Each ``mirrors`` host copy of each attention layer of ``spec`` that is missing or differs from its exported
    device scale, as ``'<name>=<mirror>, but the device scale is <value>'``."""
    state = adapter.export_kernel_state(model)
    host = adapter.host_mirrors(model)
    problems = []
    for index in range(len(spec.layers)):
        prefix = spec.attention_prefix(index)
        for mirror in mirrors:
            device = state.get(f"{prefix}{MIRRORED_SCALE[mirror]}")
            name = f"{prefix}{mirror}"
            if device is None:
                problems.append(f"{prefix}{MIRRORED_SCALE[mirror]} missing from the export")
            elif name not in host:
                problems.append(f"{name} missing")
            elif float(host[name]) != float(device):
                problems.append(f"{name}={float(host[name])!r}, but the device scale is {float(device)!r}")
    return problems


def assert_mirrors_match_scales(what: str, adapter: Any, model: Any, spec: ModelSpec, rule: str, *,
                                request: Any = None) -> None:
    """Every host mirror a MUST rule names exists and equals its device scale [LOAD-18, RELOAD-14].

    An adapter without the ``host_mirrors`` capability (an engine that keeps no host copies) is not checked, nor
    is a model with an unquantized KV cache, whose kernels read no scale (vLLM's dummy loader randomizes the
    device buffers there and leaves the mirrors at 1.0).
    """
    __tracebackhide__ = True
    if HOST_MIRRORS not in adapter.capabilities or not spec.kv_cache_quantized:
        return
    problems = mirror_differences(adapter, model, spec)
    if problems:
        fail(f"host mirrors {what}", problems, _Shown("each equal to its device scale" + _reproducer(request)), rule)


class Twin:
    """One implementation model and one reference model of ``spec``, driven through the same steps.

    Every step runs on the implementation first; a step the implementation rejects is not run on the reference.
    """

    def __init__(self, impl: Any, ref: Any, spec: ModelSpec, *, device: str) -> None:
        self.impl, self.ref, self.spec = impl, ref, spec
        self.model = impl.build_model(spec, device=device)
        self.oracle = ref.build_model(spec, device=device)
        self.dummy_loaded = False

    def unfixed(self) -> set[str]:
        """Exported names whose values no rule fixes: after a dummy load with an unquantized KV cache the k and v
        scale outputs keep whatever the dummy weights put there (processing leaves them unchanged [KVPROC-9])."""
        if not self.dummy_loaded or self.spec.kv_cache_quantized:
            return set()
        return {f"{self.spec.attention_prefix(i)}{kind}_scale" for i in range(len(self.spec.layers)) for kind in "kv"}

    def both(self, step: Callable[[Any, Any], object]) -> None:
        """``step(adapter, model)`` on the implementation, then on the reference."""
        step(self.impl, self.model)
        step(self.ref, self.oracle)

    def first_load(self, weights: Callable[[], Any]) -> Twin:
        """First-load both models; ``weights()`` gives a fresh iterable each time."""
        self.both(lambda adapter, model: adapter.first_load(model, weights()))
        return self

    def dummy_load(self) -> Twin:
        """Dummy-load both (their dummy values differ: compare only after a full reload)."""
        self.both(lambda adapter, model: adapter.dummy_load(model))
        self.dummy_loaded = True
        return self

    def reload(self, weights: Callable[[], Any]) -> Twin:
        """Reload both in one call."""
        self.both(lambda adapter, model: adapter.reload(model, weights()))
        return self

    def session(self, buckets: list[list[tuple[str, torch.Tensor]]]) -> Twin:
        """Reload both through a session, one ``load`` per bucket (one-call reloads without ``reload_sessions``)."""
        def run(adapter: Any, model: Any) -> None:
            if "reload_sessions" not in adapter.capabilities:
                adapter.reload(model, [pair for bucket in buckets for pair in bucket])
                return
            session = adapter.open_reload(model)
            for bucket in buckets:
                session.load(bucket)
            session.finish()
        self.both(run)
        return self

    def check(self, what: str, rule: str, *, request: Any = None,
              tolerances: Iterable[Tolerance] = CONTRACT_TOLERANCES) -> None:
        """The exported kernel states are equal, but for ``unfixed()`` names and ``tolerances`` [LOAD-17, RELOAD-13]."""
        __tracebackhide__ = True
        unfixed = self.unfixed()
        got, expected = (({n: t for n, t in adapter.export_kernel_state(model).items() if n not in unfixed})
                         for adapter, model in ((self.impl, self.model), (self.ref, self.oracle)))
        assert_same_as_reference(what, got, expected, rule, request=request, tolerances=tolerances)

    def check_mirrors(self, what: str, rule: str, *, request: Any = None) -> None:
        """The implementation's host mirrors equal its device scales [LOAD-18, RELOAD-14]."""
        __tracebackhide__ = True
        assert_mirrors_match_scales(what, self.impl, self.model, self.spec, rule, request=request)
