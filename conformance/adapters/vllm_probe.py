#!/usr/bin/env python3
"""Probe what vLLM's real loader code does for every loadspec contract rule.

Run with the isolated environment built by ``vllm_env.sh``::

    VLLM_TARGET_DEVICE=cpu HF_HUB_OFFLINE=1 .venv-vllm/bin/python -P \
        conformance/adapters/vllm_probe.py [--json OUT.json] [--only FAMILY,...]

For each rule ID of ``conformance/rules.py`` it prints sub-checks and a final
table: PASS / FAIL against the rule text, with the value or exception message
observed.  ``N/A`` means the rule cannot be exercised against this vLLM version
(the reason is printed); ``ERROR`` means the probe itself broke (a bug here, or
an API that moved).  Every check runs in its own try/except, so one failure
never stops the rest.

Standalone: imports nothing from loadspec except reading ``rules.py`` (pure
stdlib) for the level and text of each rule.  Everything vLLM-specific is
exercised on vLLM's own classes, built on CPU per
/work/shared/notes/vllm-on-cpu.md.  One monkeypatch is installed for FP8
*linear* processing: ``vllm._custom_ops.scaled_fp8_quant`` gets a pure-torch
stand-in for the static per-tensor case, because the compiled
``torch.ops._C.static_scaled_fp8_quant`` does not exist on CPU.  Two spies
(wrappers that only record and then call the original) observe processing
order: the per-instance ``process_weights_after_loading`` of quant methods and
attention layers, and ``reload.layerwise._layerwise_process``.
"""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

# --------------------------------------------------------------------------
# Result bookkeeping
# --------------------------------------------------------------------------

PASS, FAIL, NA, ERROR = "PASS", "FAIL", "N/A", "ERROR"


@dataclass
class Sub:
    label: str
    verdict: str
    observed: str


@dataclass
class RuleResult:
    rule_id: str
    subs: list[Sub] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        vs = [s.verdict for s in self.subs]
        if not vs:
            return "NOT PROBED"
        if ERROR in vs:
            return ERROR
        if FAIL in vs:
            return FAIL
        if all(v == NA for v in vs):
            return NA
        return PASS


RESULTS: dict[str, RuleResult] = {}
VERBOSE = True


def _short(x: object, n: int = 300) -> str:
    s = str(x).replace("\n", " ")
    return s if len(s) <= n else s[: n - 3] + "..."


def record(rule_id: str, label: str, verdict, observed: object) -> None:
    if verdict not in (PASS, FAIL, NA, ERROR):
        verdict = PASS if verdict else FAIL
    res = RESULTS.setdefault(rule_id, RuleResult(rule_id))
    res.subs.append(Sub(label, verdict, _short(observed, 1500)))
    if VERBOSE:
        print(f"  [{verdict:5}] {rule_id:10} {label}: {_short(observed, 220)}", flush=True)


def exc_str(e: BaseException) -> str:
    msg = str(e)
    return f"{type(e).__name__}({msg!r})" if msg else type(e).__name__


def missing_ct(e: BaseException | None) -> bool:
    """The exception is the missing optional compressed-tensors package."""
    return isinstance(e, ImportError) and "compressed_tensors" in str(e)


CT_MISSING_NOTE = ("needs the compressed-tensors package, which is not in the notes' recipe "
                   "(vllm_env.sh WITH_COMPRESSED_TENSORS=1 adds it)")


def attempt(rule_id: str, label: str, fn) -> None:
    """Run one sub-check ``fn() -> (verdict, observed)``; an exception is an ERROR
    (N/A when it is only the missing optional compressed-tensors package)."""
    try:
        verdict, observed = fn()
    except Exception as e:  # noqa: BLE001
        if missing_ct(e):
            verdict, observed = NA, f"{CT_MISSING_NOTE}: {exc_str(e)}"
        else:
            verdict, observed = ERROR, f"probe error: {exc_str(e)} @ {_where(e)}"
    record(rule_id, label, verdict, observed)


def _where(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    return f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"


def catch(fn):
    """Call fn(); return (exception or None, result or None)."""
    try:
        return None, fn()
    except Exception as e:  # noqa: BLE001
        return e, None


SECTIONS: list[tuple[str, tuple[str, ...], object]] = []


def section(*rule_ids: str):
    """Register a probe section; an exception escaping it marks its rules ERROR."""

    def deco(fn):
        SECTIONS.append((fn.__name__, rule_ids, fn))
        return fn

    return deco


# --------------------------------------------------------------------------
# Rules (level and text) from conformance/rules.py, read as a plain module
# --------------------------------------------------------------------------


def load_rules():
    path = Path(__file__).resolve().parents[1] / "rules.py"
    try:
        spec = importlib.util.spec_from_file_location("_loadspec_rules", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["_loadspec_rules"] = mod
        spec.loader.exec_module(mod)
        return {r.id: r for r in mod.RULES}
    except Exception as e:  # noqa: BLE001
        print(f"warning: cannot read {path}: {exc_str(e)}; levels unknown", file=sys.stderr)
        return {}


# --------------------------------------------------------------------------
# vLLM imports and log capture
# --------------------------------------------------------------------------

T0 = time.time()
import vllm  # noqa: E402
import vllm.logger as vllm_logger  # noqa: E402
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig  # noqa: E402
from vllm.model_executor.layers.quantization.fp8 import Fp8Config  # noqa: E402
from vllm.model_executor.layers.quantization.kv_cache import (  # noqa: E402
    BaseKVCacheMethod,
    KVCacheScaleParameter,
)
from vllm.model_executor.model_loader.reload import (  # noqa: E402
    finalize_layerwise_reload,
    initialize_layerwise_reload,
    record_metadata_for_reloading,
)
from vllm.model_executor.model_loader.reload import layerwise as vllm_layerwise  # noqa: E402
from vllm.model_executor.model_loader.reload.meta import CopyCounter, get_numel_loaded  # noqa: E402
from vllm.model_executor.model_loader.utils import process_weights_after_loading  # noqa: E402
from vllm.model_executor.model_loader.weight_utils import default_weight_loader  # noqa: E402
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper  # noqa: E402

IMPORT_SECONDS = time.time() - T0


class LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level=logging.DEBUG) -> list[str]:
        out = []
        for r in self.records:
            if r.levelno >= level:
                try:
                    out.append(r.getMessage())
                except Exception:  # noqa: BLE001
                    out.append(str(r.msg))
        return out

    @contextlib.contextmanager
    def window(self):
        """Capture only what is logged inside the block; reset warning_once caches."""
        for name in ("_print_warning_once", "_print_info_once", "_print_debug_once"):
            f = getattr(vllm_logger, name, None)
            if f is not None and hasattr(f, "cache_clear"):
                f.cache_clear()
        start = len(self.records)
        box: list[logging.LogRecord] = []
        try:
            yield box
        finally:
            box.extend(self.records[start:])


LOGS = LogCapture()
_vllm_root_logger = logging.getLogger("vllm")
_vllm_root_logger.addHandler(LOGS)
_vllm_root_logger.setLevel(logging.DEBUG)  # the console handler keeps VLLM_LOGGING_LEVEL


def msgs(box, level=logging.DEBUG) -> list[str]:
    out = []
    for r in box:
        if r.levelno >= level:
            try:
                out.append(r.getMessage())
            except Exception:  # noqa: BLE001
                out.append(str(r.msg))
    return out


# --------------------------------------------------------------------------
# Building real vLLM objects on CPU (the recipe)
# --------------------------------------------------------------------------


class VllmCpu:
    """ModelConfig + VllmConfig + gloo process group, created once."""

    def __init__(self):
        from transformers import LlamaConfig
        from vllm.config import CacheConfig, ModelConfig, VllmConfig, set_current_vllm_config
        from vllm.distributed import init_distributed_environment, initialize_model_parallel

        t = time.time()
        self.tmp = tempfile.mkdtemp(prefix="vllm-probe-llama-")
        LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
            max_position_embeddings=128,
        ).save_pretrained(self.tmp)
        self.CacheConfig = CacheConfig
        self.model_config = ModelConfig(model=self.tmp, skip_tokenizer_init=True, dtype="bfloat16")
        self.vllm_config = VllmConfig(
            model_config=self.model_config, cache_config=CacheConfig(cache_dtype="fp8")
        )
        self._set = set_current_vllm_config
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with self.ctx():
            init_distributed_environment(
                world_size=1, rank=0, distributed_init_method=f"tcp://127.0.0.1:{port}",
                local_rank=0, backend="gloo",
            )
            initialize_model_parallel(1, 1)
        self.setup_seconds = time.time() - t
        self.counter = itertools.count()

    def ctx(self):
        return self._set(self.vllm_config)

    def uid(self, stem: str) -> str:
        return f"{stem}{next(self.counter)}"

    def attention(self, kv_dtype="fp8", quant_config="fp8", prefix=None, default_dtype=None):
        """A real Attention(num_heads=4, head_size=64, num_kv_heads=2) on the CPU backend."""
        from vllm.model_executor.layers.attention import Attention

        if quant_config == "fp8":
            quant_config = Fp8Config(is_checkpoint_fp8_serialized=True, activation_scheme="static")
        cc = self.CacheConfig(cache_dtype=kv_dtype)
        with self.ctx(), _default_dtype(default_dtype):
            return Attention(
                num_heads=4, head_size=64, scale=0.125, num_kv_heads=2, cache_config=cc,
                quant_config=quant_config, prefix=prefix or self.uid("probe.attn"),
            )


@contextlib.contextmanager
def _default_dtype(dtype):
    if dtype is None:
        yield
        return
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


_ENV: VllmCpu | None = None
_ENV_ERROR: Exception | None = None


def env() -> VllmCpu:
    global _ENV, _ENV_ERROR
    if _ENV is None:
        if _ENV_ERROR is not None:
            raise RuntimeError(f"vLLM CPU set-up failed earlier: {exc_str(_ENV_ERROR)}")
        try:
            _ENV = VllmCpu()
        except Exception as e:
            _ENV_ERROR = e
            raise
    return _ENV


# ---- FP8 linear stand-in ---------------------------------------------------

FP8_STANDIN_CALLS = {"static_per_tensor": 0, "deferred": 0}


def install_fp8_standin() -> None:
    """The adapter's pure-torch stand-in for ``vllm._custom_ops.scaled_fp8_quant``, counting into FP8_STANDIN_CALLS."""
    from loadspec.conformance.adapters.vllm import install_fp8_standin as install

    install(FP8_STANDIN_CALLS)


# ---- small helpers -----------------------------------------------------------


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(bits(a), bits(b))


def f32(x: float) -> float:
    """x rounded to float32, as a Python float."""
    return torch.tensor(x, dtype=torch.float32).item()


def scale_state(attn) -> dict:
    out = {}
    for n in ("_q_scale", "_k_scale", "_v_scale", "_prob_scale"):
        t = getattr(attn, n, None)
        out[n] = None if t is None else t.item()
    for n in ("_q_scale_float", "_k_scale_float", "_v_scale_float", "_prob_scale_float"):
        out[n] = getattr(attn, n, None)
    for n in ("_k_scale_cpu", "_v_scale_cpu"):
        t = getattr(attn, n, None)
        out[n] = None if t is None else t.item()
    return out


def load_scales(attn, **vals) -> None:
    """Load KV scales through each parameter's own weight_loader."""
    for name, v in vals.items():
        p = getattr(attn, name)
        getattr(p, "weight_loader", default_weight_loader)(p, torch.tensor(v, dtype=torch.float32))


class Holder(nn.Module):
    def __init__(self, **mods):
        super().__init__()
        for k, v in mods.items():
            setattr(self, k, v)


def vllm_process(model: nn.Module) -> None:
    """vLLM's own post-load pass, as the model loader runs it."""
    process_weights_after_loading(model, env().model_config, torch.device("cpu"))


def fmt_state(st: dict) -> str:
    return ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in st.items())


# ==========================================================================
# SCALE
# ==========================================================================


@section("SCALE-1", "SCALE-2", "SCALE-3", "SCALE-4", "SCALE-5", "SCALE-6", "SCALE-7")
def probe_scale():
    def s1():
        p = KVCacheScaleParameter()
        ok = p.dim() == 0 and p.item() == -1.0 and p.requires_grad is False
        return ok, f"shape={tuple(p.shape)} value={p.item()} requires_grad={p.requires_grad} dtype={p.dtype} class={type(p).__name__}"

    attempt("SCALE-1", "KVCacheScaleParameter() is 0-d, -1.0, requires_grad=False", s1)

    def s2_default():
        p = KVCacheScaleParameter()
        return p.dtype == torch.float32, f"default dtype {torch.get_default_dtype()} -> {p.dtype}"

    def s2_bf16():
        with _default_dtype(torch.bfloat16):
            p = KVCacheScaleParameter()
        return p.dtype == torch.float32, f"under torch.set_default_dtype(torch.bfloat16) -> {p.dtype}"

    def s2_layer():
        a = env().attention(default_dtype=torch.bfloat16)
        return a.k_scale.dtype == torch.float32, (
            f"Attention built under a bf16 default: k_scale.dtype={a.k_scale.dtype}, "
            f"_k_scale.dtype={a._k_scale.dtype} (vLLM's loader builds models under "
            f"set_default_torch_dtype(model_config.dtype))"
        )

    attempt("SCALE-2", "dtype under default float32", s2_default)
    attempt("SCALE-2", "dtype under bf16 default", s2_bf16)
    attempt("SCALE-2", "dtype of a real Attention's k_scale built under bf16", s2_layer)

    for shape in [(), (1,), (1, 1, 1)]:
        def s3(shape=shape):
            p = KVCacheScaleParameter()
            w = torch.full(shape, 0.375)
            p.weight_loader(p, w)
            return p.item() == 0.375 and p.shape == (), f"weight shape {shape} -> value {p.item()}, param shape {tuple(p.shape)}"

        attempt("SCALE-3", f"accepts shape {shape}", s3)
    for dt in [torch.bfloat16, torch.float16, torch.float64, torch.float32]:
        def s3d(dt=dt):
            p = KVCacheScaleParameter()
            w = torch.tensor(0.3, dtype=dt)
            p.weight_loader(p, w)
            want = w.to(torch.float32).item()
            return p.dtype == torch.float32 and p.item() == want, f"{dt} 0.3 -> stored {p.item()!r} ({p.dtype}); expected {want!r}"

        attempt("SCALE-3", f"accepts dtype {dt}", s3d)

    for shape in [(2,), (0,), (1, 2)]:
        def s4(shape=shape):
            p = KVCacheScaleParameter()
            p.weight_loader(p, torch.tensor(0.5))
            e, _ = catch(lambda: p.weight_loader(p, torch.ones(shape)))
            kept = p.item() == 0.5
            ok = isinstance(e, ValueError) and str(tuple(shape)) in str(e) and kept
            return ok, f"{exc_str(e) if e else 'no exception'}; value kept={kept} ({p.item()})"

        attempt("SCALE-4", f"rejects shape {shape}", s4)

    def s5():
        counts = {}
        for shape in [(), (1,), (1, 1, 1)]:
            p = KVCacheScaleParameter()
            with CopyCounter() as c:
                p.weight_loader(p, torch.full(shape, 0.25))
            counts[shape] = c.copied_numel
        return all(v == 1 for v in counts.values()), f"CopyCounter.copied_numel per load: {counts}"

    attempt("SCALE-5", "CopyCounter sees one element per scale load", s5)

    def s6():
        p = KVCacheScaleParameter()
        ptr, dev, dt = p.data_ptr(), p.device, p.dtype
        p.weight_loader(p, torch.tensor([0.125], dtype=torch.bfloat16))
        ok = p.data_ptr() == ptr and p.device == dev and p.dtype == dt
        return ok, f"data_ptr kept={p.data_ptr() == ptr}, device {dev}->{p.device}, dtype {dt}->{p.dtype}"

    attempt("SCALE-6", "loading keeps device, dtype and data_ptr", s6)

    def s7():
        p = KVCacheScaleParameter()
        calls = []
        p.weight_loader = lambda param, w: calls.append(w.item())
        root = Holder(attn=Holder())
        root.attn.k_scale = p
        loaded = AutoWeightsLoader(root).load_weights([("attn.k_scale", torch.tensor(0.5))])
        cls_loader_untouched = KVCacheScaleParameter.weight_loader is not p.weight_loader
        ok = calls == [0.5] and p.item() == -1.0 and cls_loader_untouched
        return ok, f"instance loader called with {calls}, param value {p.item()} (class loader not used), returned {sorted(loaded)}"

    attempt("SCALE-7", "instance weight_loader shadows the class loader (via AutoWeightsLoader)", s7)


# ==========================================================================
# KVPROC
# ==========================================================================


def process_case(kv_dtype="fp8", loads=None, pre=None, default_dtype=None, override_dtype=None):
    """Build a real Attention, load scales, run vLLM's post-load pass; return
    (attn, state, log messages, exception)."""
    a = env().attention(kv_dtype=kv_dtype, default_dtype=default_dtype)
    if override_dtype is not None:
        a.kv_cache_dtype = override_dtype
    if pre:
        pre(a)
    load_scales(a, **(loads or {}))
    with LOGS.window() as box:
        e, _ = catch(lambda: vllm_process(Holder(attn=a)))
    return a, scale_state(a), msgs(box, logging.WARNING), e


@section("KVPROC-1", "KVPROC-2", "KVPROC-3", "KVPROC-4", "KVPROC-5", "KVPROC-6", "KVPROC-7",
         "KVPROC-8", "KVPROC-9", "KVPROC-10", "KVPROC-11", "KVPROC-12", "KVPROC-13")
def probe_kvproc():
    def k1():
        a = env().attention()
        names = [n for n, _ in a.named_parameters(recurse=False)]
        before = {n: getattr(a, n) for n in ("q_scale", "k_scale", "v_scale", "prob_scale")}
        a.k_scale.weight_loader(a.k_scale, torch.tensor(0.5))
        a.quant_method.create_weights(a)
        after = {n: getattr(a, n) for n in before}
        fresh = all(after[n] is not before[n] and after[n].item() == -1.0
                    and isinstance(after[n], KVCacheScaleParameter) for n in after)
        ok = sorted(names) == sorted(before) and fresh
        return ok, (f"method={type(a.quant_method).__name__}; params={names}; all KVCacheScaleParameter(-1.0); "
                    f"after create_weights again: new objects with -1.0 = {fresh}")

    attempt("KVPROC-1", "create_weights gives 4 fresh sentinels; again replaces them", k1)

    def k2():
        a, st, w, e = process_case(loads=dict(k_scale=0.5, v_scale=0.25))
        ok = e is None and st["_k_scale"] == 0.5 and st["_v_scale"] == 0.25 and st["_k_scale_float"] == 0.5 and st["_v_scale_float"] == 0.25
        return ok, f"{exc_str(e) if e else ''} {fmt_state(st)}"

    attempt("KVPROC-2", "fp8, k=0.5 v=0.25 loaded", k2)

    def k2b():
        a, st, w, e = process_case(loads=dict(k_scale=0.3, v_scale=0.7))
        ok = e is None and st["_k_scale_float"] == f32(0.3) and st["_v_scale_float"] == f32(0.7)
        return ok, f"fp32 params: _k_scale_float={st['_k_scale_float']!r} (f32(0.3)={f32(0.3)!r}), _v_scale_float={st['_v_scale_float']!r}"

    attempt("KVPROC-2", "fp8, k=0.3 v=0.7 (not bf16-exact), layer built under fp32 default", k2b)

    def k2c():
        a = env().attention(default_dtype=torch.bfloat16)
        pdt = a.k_scale.dtype
        load_scales(a, k_scale=0.3, v_scale=0.7)
        vllm_process(Holder(attn=a))
        st = scale_state(a)
        ok = st["_k_scale_float"] == f32(0.3) and st["_v_scale_float"] == f32(0.7)
        return ok, (f"layer built under bf16 default (as vLLM's loader does): k_scale param dtype {pdt}; "
                    f"_k_scale={st['_k_scale']!r} _k_scale_float={st['_k_scale_float']!r} vs loaded f32 {f32(0.3)!r}; "
                    f"_v_scale_float={st['_v_scale_float']!r} vs {f32(0.7)!r}")

    attempt("KVPROC-2", "fp8, k=0.3 v=0.7, layer built under bf16 default", k2c)

    def k3():
        a, st, w, e = process_case(loads={})
        vals = [st[n] for n in ("_k_scale", "_v_scale", "_k_scale_float", "_v_scale_float", "_k_scale_cpu", "_v_scale_cpu")]
        warned = any("Using KV cache scaling factor 1.0" in m for m in w)
        ok = e is None and all(v == 1.0 for v in vals) and warned
        return ok, f"k/v outputs {vals}; '1.0' warning logged={warned}"

    attempt("KVPROC-3", "fp8, nothing loaded -> 1.0 + warning", k3)

    def k3b():
        a, st, w, e = process_case(loads={}, override_dtype="fp8_e5m2")
        warned = any("Using KV cache scaling factor 1.0" in m for m in w)
        ok = e is None and st["_k_scale"] == 1.0 and not warned
        return ok, f"(layer built fp8, kv_cache_dtype attribute set to fp8_e5m2 before processing) k={st['_k_scale']}; warning logged={warned}"

    attempt("KVPROC-3", "fp8_e5m2 (attribute override), nothing loaded -> no warning", k3b)

    def k4():
        a, st, w, e = process_case(loads=dict(k_scale=0.5))
        ok = e is None and st["_k_scale"] == 0.5 and st["_v_scale"] == 0.5
        return ok, f"{exc_str(e) if e else ''} _k={st['_k_scale']} _v={st['_v_scale']} floats={st['_k_scale_float']},{st['_v_scale_float']}"

    attempt("KVPROC-4", "fp8, only k=0.5 loaded", k4)

    def k5():
        a, st, w, e = process_case(loads=dict(v_scale=0.5))
        ok = e is None and st["_k_scale"] == 0.5 and st["_v_scale"] == 0.5
        return ok, f"{exc_str(e) if e else 'no exception'} ({_where(e) if e else ''}); _k={st['_k_scale']} _v={st['_v_scale']}"

    attempt("KVPROC-5", "fp8, only v=0.5 loaded", k5)

    for kv in ("fp8", "auto"):
        def k6(kv=kv):
            a, st, w, e = process_case(kv_dtype=kv, loads=dict(k_scale=0.5, v_scale=0.25, q_scale=0.125, prob_scale=0.0625))
            ok = e is None and st["_q_scale"] == 0.125 and st["_prob_scale"] == 0.0625
            return ok, f"{exc_str(e) if e else ''} _q={st['_q_scale']} _prob={st['_prob_scale']} _q_float={st['_q_scale_float']}"

        def k6b(kv=kv):
            a, st, w, e = process_case(kv_dtype=kv, loads=dict(k_scale=0.5, v_scale=0.25))
            ok = e is None and st["_q_scale"] == 1.0 and st["_prob_scale"] == 1.0 and st["_q_scale_float"] == 1.0
            qwarn = [m for m in w if "q scaling factor" in m]
            return ok, f"_q={st['_q_scale']} _prob={st['_prob_scale']} _q_float={st['_q_scale_float']}; warnings: {qwarn}"

        attempt("KVPROC-6", f"{kv}: q=0.125 prob=0.0625 loaded", k6)
        attempt("KVPROC-6", f"{kv}: q/prob not loaded -> 1.0", k6b)

    bad = {
        "k=NaN v=0.5": dict(k_scale=math.nan, v_scale=0.5),
        "k=0.5 v=NaN": dict(k_scale=0.5, v_scale=math.nan),
        "k=+inf v=0.5": dict(k_scale=math.inf, v_scale=0.5),
        "k=0 v=0.5": dict(k_scale=0.0, v_scale=0.5),
        "k=0.5 v=0": dict(k_scale=0.5, v_scale=0.0),
        "k=-0.5 v=-0.5": dict(k_scale=-0.5, v_scale=-0.5),
        "k=0.5 v=-2": dict(k_scale=0.5, v_scale=-2.0),
        "q=NaN (k,v ok)": dict(k_scale=0.5, v_scale=0.25, q_scale=math.nan),
        "prob=+inf (k,v ok)": dict(k_scale=0.5, v_scale=0.25, prob_scale=math.inf),
    }
    for label, loads in bad.items():
        def k7(loads=loads):
            a, st, w, e = process_case(loads=loads)
            ok = isinstance(e, ValueError) and st["_k_scale"] == 1.0 and st["_v_scale"] == 1.0
            what = exc_str(e) if e else "accepted"
            return ok, f"{what}; _k={st['_k_scale']} _v={st['_v_scale']} _q={st['_q_scale']} _prob={st['_prob_scale']}"

        attempt("KVPROC-7", label, k7)

    for dt in ("int8_per_token_head", "fp8_per_token_head", "int4_per_token_head"):
        def k8(dt=dt):
            e_build, a = catch(lambda: env().attention(kv_dtype=dt))
            note = "built with this cache dtype"
            if e_build is not None:
                a, st, w, e = process_case(loads=dict(k_scale=0.5, v_scale=0.25, q_scale=0.125), override_dtype=dt)
                note = f"construction failed ({_short(exc_str(e_build), 120)}); fp8 layer with kv_cache_dtype attribute overridden"
            else:
                load_scales(a, k_scale=0.5, v_scale=0.25, q_scale=0.125)
                e, _ = catch(lambda: vllm_process(Holder(attn=a)))
                st = scale_state(a)
            ok = e is None and st["_k_scale"] == 1.0 and st["_v_scale"] == 1.0 and st["_k_scale_float"] == 1.0
            return ok, f"{note}; {exc_str(e) if e else ''} _k={st['_k_scale']} _v={st['_v_scale']} _q={st['_q_scale']} floats k,v={st['_k_scale_float']},{st['_v_scale_float']}"

        attempt("KVPROC-8", dt, k8)

    for kv in ("auto", "bfloat16"):
        def k9(kv=kv):
            def pre(a):
                a._k_scale.fill_(3.0)
                a._v_scale.fill_(5.0)
            a, st, w, e = process_case(kv_dtype=kv, loads=dict(k_scale=0.5, v_scale=0.25), pre=pre)
            ok = e is None and st["_k_scale"] == 3.0 and st["_v_scale"] == 5.0
            return ok, f"method={type(getattr(a, 'quant_method', None)).__name__}; _k_scale pre-set 3.0 -> {st['_k_scale']}, _v 5.0 -> {st['_v_scale']} (k=0.5/v=0.25 loaded)"

        attempt("KVPROC-9", f"kv_cache_dtype={kv} under Fp8Config", k9)

    def k10():
        e, a = catch(lambda: env().attention(kv_dtype="fp8_e5m2"))
        if missing_ct(e):
            return NA, (f"{CT_MISSING_NOTE}: _init_kv_cache_quant imports CompressedTensorsConfig in its "
                        f"fp8_e5m2 branch, so without it construction raises {exc_str(e)}")
        ok = isinstance(e, ValueError)
        return ok, exc_str(e) if e else f"built without error ({type(getattr(a, 'quant_method', None)).__name__})"

    attempt("KVPROC-10", "Attention(fp8_e5m2, Fp8Config)", k10)

    def k11():
        a, st, w, e = process_case(loads=dict(k_scale=0.3, v_scale=0.2, q_scale=0.4, prob_scale=0.5))
        mism = {}
        for h, d in (("_k_scale_float", "_k_scale"), ("_v_scale_float", "_v_scale"),
                     ("_q_scale_float", "_q_scale"), ("_prob_scale_float", "_prob_scale"),
                     ("_k_scale_cpu", "_k_scale"), ("_v_scale_cpu", "_v_scale")):
            if st[h] != st[d]:
                mism[h] = (st[h], st[d])
        return not mism and e is None, f"mismatches host!=device: {mism or 'none'}; {fmt_state(st)}"

    attempt("KVPROC-11", "host mirrors after first load (k=.3 v=.2 q=.4 prob=.5)", k11)

    def k11b():
        a = env().attention()
        obj = a._k_scale_cpu
        a.process_weights_after_loading(torch.bfloat16)  # layer-level hook only
        # an attention without a loading quant method resets via set_default_quant_scales
        b = env().attention(quant_config=None, kv_dtype="auto")
        objb = b._k_scale_cpu
        b.process_weights_after_loading(torch.bfloat16)
        return NA, (f"set_default_quant_scales replaces _k_scale_cpu: Fp8 layer-level hook kept object={a._k_scale_cpu is obj}; "
                    f"no-quant layer-level hook kept object={b._k_scale_cpu is objb}")

    attempt("KVPROC-11", "identity of _k_scale_cpu across the layer-level hook (info)", k11b)

    def k12():
        a = env().attention()
        load_scales(a, k_scale=0.5, v_scale=0.25, q_scale=0.125)
        qm = a.quant_method
        qm.process_weights_after_loading(a)
        gone = [n for n in ("q_scale", "k_scale", "v_scale", "prob_scale") if not hasattr(a, n)]
        st1 = scale_state(a)
        e, _ = catch(lambda: qm.process_weights_after_loading(a))
        st2 = scale_state(a)
        ok = len(gone) == 4 and e is None and st1 == st2
        return ok, f"params deleted={gone}; second call {exc_str(e) if e else 'ok'}; state unchanged={st1 == st2}"

    attempt("KVPROC-12", "params deleted; second processing is a no-op", k12)

    def k13():
        a = env().attention()
        ptrs = {n: getattr(a, n).data_ptr() for n in ("_q_scale", "_k_scale", "_v_scale", "_prob_scale")}
        objs = {n: getattr(a, n) for n in ptrs}
        load_scales(a, k_scale=0.5, v_scale=0.25, q_scale=0.125, prob_scale=0.5)
        vllm_process(Holder(attn=a))
        same = {n: getattr(a, n).data_ptr() == ptrs[n] and getattr(a, n) is objs[n] for n in ptrs}
        return all(same.values()), f"data_ptr and object kept: {same}"

    attempt("KVPROC-13", "device scales written in place", k13)

    def ct_info():
        have, why = ct_available()
        if not have:
            return NA, why
        cfg = make_config("compressed-tensors")
        a = env().attention(quant_config=cfg)
        shapes = {n: (tuple(getattr(a, n).shape), getattr(a, n).flatten()[0].item()) for n in ("k_scale", "v_scale", "q_scale")}
        obj = a._k_scale
        load_scales(a, k_scale=0.5, v_scale=0.25)
        vllm_process(Holder(attn=a))
        return NA, (f"(info, notes clause 24) CT KV method {type(a.quant_method).__name__}: initial {shapes} (no sentinel, no prob_scale); "
                    f"after processing _k_scale is {type(a._k_scale).__name__}, same object={a._k_scale is obj}, _k_scale_float={a._k_scale_float}")

    attempt("KVPROC-1", "compressed-tensors KV method defaults (info)", ct_info)


# ==========================================================================
# MAP
# ==========================================================================

import regex as re  # noqa: E402  (vLLM's mappers use the `regex` package)


def mapper_fields(m: WeightsMapper) -> dict:
    return {
        "renaming": list(m.orig_to_new_renaming),
        "regex": dict(m.orig_to_new_regex), "substr": dict(m.orig_to_new_substr),
        "stacked": dict(m.orig_to_new_stacked), "prefix": dict(m.orig_to_new_prefix),
        "suffix": dict(m.orig_to_new_suffix),
    }


def mapper_keys_in_order(m: WeightsMapper) -> dict:
    return {k: list(v.keys()) if isinstance(v, dict) else v for k, v in mapper_fields(m).items()}


@section("MAP-1", "MAP-2", "MAP-3", "MAP-4", "MAP-5", "MAP-6", "MAP-7", "MAP-8", "MAP-9", "MAP-10", "MAP-11")
def probe_map():
    def m1():
        a = WeightsMapper(orig_to_new_suffix={".b": ".c"})
        b = WeightsMapper(orig_to_new_substr={".c": ".d"})
        r1, r2 = (a | b).map_name("x.b"), (b | a).map_name("x.b")
        full = WeightsMapper(
            orig_to_new_suffix={".weight": ".w"}, orig_to_new_prefix={"m.": "model."},
            orig_to_new_stacked={".k_proj": (".qkv_proj", "k")},
            orig_to_new_substr={"m.l.": "m.layers."}, orig_to_new_regex={re.compile(r"^model\."): "m."},
        )
        r3 = full._map_name_with_shard("model.l.0.k_proj.weight")
        ok = r1 == r2 == "x.c" and r3 == ("model.layers.0.qkv_proj.w", "k")
        return ok, f"(suffix|substr)('x.b')={r1!r}, (substr|suffix)={r2!r}; regex->substr->stacked->prefix->suffix chain: {r3}"

    attempt("MAP-1", "fixed stage order regardless of composition", m1)

    for kind, mk in [
        ("substr", lambda d: WeightsMapper(orig_to_new_substr=d)),
        ("regex", lambda d: WeightsMapper(orig_to_new_regex={re.compile(re.escape(k)): v for k, v in d.items()})),
        ("prefix", lambda d: WeightsMapper(orig_to_new_prefix=d)),
        ("suffix", lambda d: WeightsMapper(orig_to_new_suffix=d)),
    ]:
        def m2(mk=mk, kind=kind):
            if kind == "prefix":
                fwd, rev, name, want_f, want_r = {"foo.": "bar.", "bar.": "baz."}, {"bar.": "baz.", "foo.": "bar."}, "foo.y", "baz.y", "bar.y"
            elif kind == "suffix":
                fwd, rev, name, want_f, want_r = {".foo": ".bar", ".bar": ".baz"}, {".bar": ".baz", ".foo": ".bar"}, "x.foo", "x.baz", "x.bar"
            else:
                fwd, rev, name, want_f, want_r = {"foo": "bar", "bar": "baz"}, {"bar": "baz", "foo": "bar"}, "x.foo.y", "x.baz.y", "x.bar.y"
            got_f, got_r = mk(fwd).map_name(name), mk(rev).map_name(name)
            return got_f == want_f and got_r == want_r, f"{fwd} maps {name!r} -> {got_f!r}; reversed order -> {got_r!r}"

        attempt("MAP-2", f"{kind}: chained entries in insertion order", m2)

    def m3():
        got = {
            "regex a->b on a.a.a": WeightsMapper(orig_to_new_regex={re.compile("a"): "b"}).map_name("a.a.a"),
            "substr a->b": WeightsMapper(orig_to_new_substr={"a": "b"}).map_name("a.a.a"),
            "stacked a->b": WeightsMapper(orig_to_new_stacked={"a": ("b", 0)}).map_name("a.a.a"),
            "prefix a->b": WeightsMapper(orig_to_new_prefix={"a": "b"}).map_name("a.a.a"),
            "suffix .w->.v on x.w.w": WeightsMapper(orig_to_new_suffix={".w": ".v"}).map_name("x.w.w"),
        }
        want = ["b.b.b", "b.a.a", "b.a.a", "b.a.a", "x.w.v"]
        return list(got.values()) == want, str(got)

    attempt("MAP-3", "regex all / substr,stacked,prefix first / suffix last", m3)

    for kind, m in [
        ("regex", WeightsMapper(orig_to_new_regex={re.compile(r"drop"): None})),
        ("substr", WeightsMapper(orig_to_new_substr={"drop": None})),
        ("prefix", WeightsMapper(orig_to_new_prefix={"drop.": None})),
        ("suffix", WeightsMapper(orig_to_new_suffix={".drop": None})),
    ]:
        def m4(m=m, kind=kind):
            name = {"prefix": "drop.x", "suffix": "x.drop"}.get(kind, "a.drop.b")
            t = torch.zeros(1)
            r = m.map_name(name)
            applied = list(m.apply([(name, t), ("keep", t)]))
            lst, dct = m.apply_list([name, "keep"]), m.apply_dict({name: 1, "keep": 2})
            ok = r is None and [n for n, _ in applied] == ["keep"] and lst == ["keep"] and list(dct) == ["keep"]
            return ok, f"map_name={r!r}; apply -> {[n for n, _ in applied]}; apply_list -> {lst}; apply_dict -> {list(dct)}"

        attempt("MAP-4", f"{kind} entry -> None drops", m4)

    def m4_stacked():
        e, m = catch(lambda: WeightsMapper(orig_to_new_stacked={"drop": None}))
        if e is not None:
            return NA, f"construction: {exc_str(e)}"
        e2, r = catch(lambda: m.map_name("a.drop"))
        return NA, f"(info) stacked entry None: map_name -> {exc_str(e2) if e2 else repr(r)} (stacked has no drop support)"

    attempt("MAP-4", "stacked entry -> None (info)", m4_stacked)

    def m5():
        a = WeightsMapper(orig_to_new_substr={"x": "A", "y": "A2"}, orig_to_new_regex={re.compile("r1"): "ra"},
                          orig_to_new_stacked={".k": (".kv", "k")}, orig_to_new_suffix={".s": ".sa"})
        b = WeightsMapper(orig_to_new_substr={"x": "B", "z": "B2"}, orig_to_new_regex={re.compile("r1"): "rb"},
                          orig_to_new_stacked={".k": (".kb", "kb")}, orig_to_new_suffix={".s": ".sb"})
        fa, fb = repr(mapper_fields(a)), repr(mapper_fields(b))
        c = a | b
        ok_unchanged = repr(mapper_fields(a)) == fa and repr(mapper_fields(b)) == fb and c is not a and c is not b
        res = {n: c._map_name_with_shard(n) for n in ("x", "r1", "q.k", "q.s")}
        keys = mapper_keys_in_order(c)["substr"]
        ok = ok_unchanged and res == {"x": ("B", None), "r1": ("rb", None), "q.k": ("q.kb", "kb"), "q.s": ("q.sb", None)}
        return ok, f"b wins: {res}; substr key order {keys}; operands unchanged={ok_unchanged}"

    attempt("MAP-5", "a | b: right operand wins, operands unchanged", m5)

    def m6():
        m = WeightsMapper()
        names = ["model.layers.0.self_attn.k_scale", "a", "", "x.kv_scale", "lm_head.weight"]
        got = [m.map_name(n) for n in names]
        return got == names, f"{dict(zip(names, got))}"

    attempt("MAP-6", "empty mapper is identity", m6)

    def m7():
        a = WeightsMapper(orig_to_new_substr={"foo": "bar"}, orig_to_new_suffix={".w": ".a"})
        b = WeightsMapper(orig_to_new_substr={"bar": "baz", "foo": "qux"}, orig_to_new_prefix={"p.": "P."})
        c = WeightsMapper(orig_to_new_substr={"baz": "end"}, orig_to_new_suffix={".w": ".c"},
                          orig_to_new_regex={re.compile(r"\.k_scale$"): ".attn.k_scale"})
        names = ["p.foo.w", "foo.bar.baz.w", "x.k_scale", "p.bar", "qux.w"]
        left = [((a | b) | c).map_name(n) for n in names]
        right = [(a | (b | c)).map_name(n) for n in names]
        return left == right, f"(a|b)|c={left}; a|(b|c)={right}"

    attempt("MAP-7", "associativity", m7)

    names = producer_names() + canonical_names()
    for cfg_name in CONFIG_NAMES:
        def m8(cfg_name=cfg_name):
            if cfg_name in NEEDS_CT and not ct_available()[0]:
                return NA, ct_available()[1]
            m = cache_mapper(cfg_name)
            bad = {}
            for n in names:
                once = m.map_name(n)
                twice = m.map_name(once) if once is not None else None
                if once != twice:
                    bad[n] = (once, twice)
            canon_bad = {n: m.map_name(n) for n in canonical_names() if m.map_name(n) != n}
            return not bad and not canon_bad, f"non-idempotent: {bad or 'none'}; canonical names moved: {canon_bad or 'none'}"

        attempt("MAP-8", f"{cfg_name} cache-scale mapper idempotent", m8)

    def m9():
        obs = {}
        e, m = catch(lambda: WeightsMapper(orig_to_new_suffix={"": ".x"}))
        obs["empty suffix: build"] = exc_str(e) if e else "accepted"
        if m is not None:
            e2, r = catch(lambda: m.map_name("a.b"))
            obs["empty suffix: map 'a.b'"] = exc_str(e2) if e2 else repr(r)
        for kind, kw in (("prefix", "orig_to_new_prefix"), ("substr", "orig_to_new_substr")):
            e, m = catch(lambda kw=kw: WeightsMapper(**{kw: {"": "pre."}}))
            obs[f"empty {kind}: build"] = exc_str(e) if e else f"accepted; maps 'a.b' -> {m.map_name('a.b')!r}"
        e, m = catch(lambda: WeightsMapper(orig_to_new_regex={"(": "x"}))
        obs["uncompilable regex '(' (str key): build"] = exc_str(e) if e else "accepted"
        if m is not None:
            e2, r = catch(lambda: m.map_name("a"))
            obs["... map 'a'"] = exc_str(e2) if e2 else repr(r)
        rejected_all = all(v != "accepted" and not str(v).startswith("accepted") for k, v in obs.items() if k.endswith("build"))
        return rejected_all, str(obs)

    attempt("MAP-9", "bad keys rejected at build time", m9)

    def m10():
        m = WeightsMapper(orig_to_new_stacked={".k_proj": (".qkv_proj", "k")})
        t = torch.ones(2)
        had = hasattr(t, "shard_id")
        out = list(m.apply([("l.k_proj.weight", t)]))
        mutated = getattr(t, "shard_id", None)
        same_obj = out[0][1] is t
        return (not had and mutated is None), f"caller tensor gained shard_id={mutated!r}; yielded the same object={same_obj}"

    attempt("MAP-10", "apply does not mutate caller tensors", m10)

    def m11():
        m = WeightsMapper(orig_to_new_stacked={".k_proj": (".qkv_proj", "k"), ".qkv_proj": (".qkv_proj", "second")})
        r = m._map_name_with_shard("l.k_proj.weight")
        t = torch.ones(1)
        out = list(m.apply([("l.k_proj.weight", t)]))
        lst = WeightsMapper(orig_to_new_stacked={".kv": (".kv", [0, 1])})
        out2 = list(lst.apply([("l.kv.weight", torch.ones(1))]))
        ok = r == ("l.qkv_proj.weight", "second") and out[0][0] == "l.qkv_proj.weight" and out[0][1].shard_id == "second"
        return ok, (f"_map_name_with_shard={r}; apply yields ({out[0][0]!r}, shard_id={out[0][1].shard_id!r}); "
                    f"(0.33.0 extra) list shard id [0,1] yields {[(n, t.shard_id) for n, t in out2]}")

    attempt("MAP-11", "stacked rename + shard id, last wins", m11)


# ==========================================================================
# NAMES
# ==========================================================================

CONFIG_NAMES = ("base", "fp8", "quark", "compressed-tensors", "modelopt")
P = "model.layers.0."


def producer_names() -> list[str]:
    return [P + s for s in (
        "self_attn.k_scale", "self_attn.v_scale", "self_attn.q_scale",
        "self_attn.k_proj.output_scale", "self_attn.v_proj.output_scale", "self_attn.q_proj.output_scale",
        "self_attn.k_proj.k_scale", "self_attn.v_proj.v_scale",
        "self_attn.prob_output_scale", "self_attn.kv_scale",
        "self_attn.qkv_proj.k_scale", "self_attn.qkv_proj.v_scale",
        "mixer.k_proj.k_scale", "mixer.v_proj.v_scale", "self_attn.prob_scale",
    )]


def canonical_names() -> list[str]:
    return [P + f"self_attn.attn.{s}" for s in ("k_scale", "v_scale", "q_scale", "prob_scale")] + [P + "mixer.attn.k_scale"]


# (rule, producer suffix, canonical suffix)
NAME_CASES = [
    ("NAMES-1", "self_attn.k_scale", "self_attn.attn.k_scale"),
    ("NAMES-1", "self_attn.v_scale", "self_attn.attn.v_scale"),
    ("NAMES-1", "self_attn.q_scale", "self_attn.attn.q_scale"),
    ("NAMES-2", "self_attn.k_proj.output_scale", "self_attn.attn.k_scale"),
    ("NAMES-2", "self_attn.v_proj.output_scale", "self_attn.attn.v_scale"),
    ("NAMES-2", "self_attn.q_proj.output_scale", "self_attn.attn.q_scale"),
    ("NAMES-3", "self_attn.k_proj.k_scale", "self_attn.attn.k_scale"),
    ("NAMES-3", "self_attn.v_proj.v_scale", "self_attn.attn.v_scale"),
    ("NAMES-4", "self_attn.k_proj.output_scale", "self_attn.attn.k_scale"),
    ("NAMES-4", "self_attn.v_proj.output_scale", "self_attn.attn.v_scale"),
    ("NAMES-4", "self_attn.q_proj.output_scale", "self_attn.attn.q_scale"),
    ("NAMES-4", "self_attn.prob_output_scale", "self_attn.attn.prob_scale"),
    ("NAMES-5", "self_attn.k_scale", "self_attn.attn.k_scale"),
    ("NAMES-5", "self_attn.v_scale", "self_attn.attn.v_scale"),
    ("NAMES-6", "self_attn.kv_scale", "self_attn.attn.k_scale"),
    ("NAMES-7", "self_attn.qkv_proj.k_scale", "self_attn.attn.k_scale"),
    ("NAMES-7", "self_attn.qkv_proj.v_scale", "self_attn.attn.v_scale"),
    ("NAMES-9", "mixer.k_proj.k_scale", "mixer.attn.k_scale"),
    ("NAMES-9", "mixer.v_proj.v_scale", "mixer.attn.v_scale"),
    ("NAMES-11", "self_attn.prob_scale", "self_attn.attn.prob_scale"),
]
# Which configs each rule is about (rules 2 and 11 say "every config").
RULE_CONFIGS = {
    "NAMES-1": ("compressed-tensors", "base", "fp8", "quark", "modelopt"),
    "NAMES-2": CONFIG_NAMES, "NAMES-3": ("modelopt",), "NAMES-4": ("quark",),
    "NAMES-5": ("fp8", "base"), "NAMES-6": CONFIG_NAMES, "NAMES-7": CONFIG_NAMES,
    "NAMES-9": ("modelopt", "base", "fp8"), "NAMES-11": CONFIG_NAMES,
}

_CONFIGS: dict[str, object] = {}


def make_config(name: str):
    """Instances of each quantization config, built from small dicts."""
    if name in _CONFIGS:
        return _CONFIGS[name]
    if name == "fp8":
        cfg = Fp8Config(is_checkpoint_fp8_serialized=True, activation_scheme="static")
    elif name == "compressed-tensors":
        from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
            CompressedTensorsConfig,
        )
        cfg = CompressedTensorsConfig.from_config({
            "format": "float-quantized", "config_groups": {}, "ignore": [],
            "kv_cache_scheme": {"type": "float", "num_bits": 8, "strategy": "tensor",
                                "symmetric": True, "dynamic": False},
        })
    elif name == "modelopt":
        from vllm.model_executor.layers.quantization.modelopt import ModelOptFp8Config
        cfg = ModelOptFp8Config.from_config({"quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}})
    elif name == "quark":
        from vllm.model_executor.layers.quantization.quark.quark import QuarkConfig
        out = {"dtype": "fp8_e4m3", "qscheme": "per_tensor"}
        cfg = QuarkConfig.from_config({
            "export": {"kv_cache_group": ["*k_proj", "*v_proj"], "pack_method": "reorder"},
            "global_quant_config": {}, "exclude": [],
            "layer_quant_config": {"*k_proj": {"output_tensors": dict(out)}, "*v_proj": {"output_tensors": dict(out)}},
        })
    else:
        raise KeyError(name)
    _CONFIGS[name] = cfg
    return cfg


NEEDS_CT = ("compressed-tensors", "quark")  # QuarkConfig imports compressed_tensors too


def ct_available() -> tuple[bool, str]:
    try:
        import compressed_tensors.quantization  # noqa: F401
        return True, ""
    except ImportError as e:
        return False, f"{CT_MISSING_NOTE}: {exc_str(e)}"


def cache_mapper(name: str) -> WeightsMapper:
    """get_cache_scale_mapper() of each config class (a staticmethod: no instance needed)."""
    if name == "base":
        return QuantizationConfig.get_cache_scale_mapper()
    if name == "fp8":
        return Fp8Config.get_cache_scale_mapper()
    if name == "quark":
        from vllm.model_executor.layers.quantization.quark.quark import QuarkConfig
        return QuarkConfig.get_cache_scale_mapper()
    if name == "modelopt":
        from vllm.model_executor.layers.quantization.modelopt import ModelOptFp8Config
        return ModelOptFp8Config.get_cache_scale_mapper()
    if name == "compressed-tensors":
        from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
            CompressedTensorsConfig,
        )
        return CompressedTensorsConfig.get_cache_scale_mapper()
    raise KeyError(name)


def llama_mapper() -> WeightsMapper:
    from vllm.model_executor.models.llama import LlamaModel
    return LlamaModel.hf_to_vllm_mapper


class FakeAttn(nn.Module):
    """Stands in for an attention layer with a Base KV method: 4 KVCacheScaleParameters."""

    def __init__(self):
        super().__init__()
        for n in ("q_scale", "k_scale", "v_scale", "prob_scale"):
            setattr(self, n, KVCacheScaleParameter())


class InnerModel(nn.Module):
    """Llama-shaped inner model: its own load_weights applies LlamaModel's stacked mapper."""

    def __init__(self, quant_config):
        super().__init__()
        self.quant_config = quant_config
        layer = nn.Module()
        layer.self_attn = nn.Module()
        layer.self_attn.attn = FakeAttn()
        layer.self_attn.qkv_proj = nn.Module()
        layer.self_attn.qkv_proj.register_parameter("weight", nn.Parameter(torch.zeros(2, 2), requires_grad=False))
        layer.mixer = nn.Module()
        layer.mixer.attn = FakeAttn()
        self.layers = nn.ModuleList([layer])

    def load_weights(self, weights):
        return AutoWeightsLoader(self).load_weights(weights, mapper=llama_mapper())


class OuterModel(nn.Module):
    """Llama-shaped *ForCausalLM: AutoWeightsLoader without a mapper, delegating to .model."""

    def __init__(self, quant_config):
        super().__init__()
        self.model = InnerModel(quant_config)

    def load_weights(self, weights):
        return AutoWeightsLoader(self).load_weights(weights)


def load_one(root: nn.Module, name: str, value=0.5):
    """Load one scalar by checkpoint name (names are Outer-relative: 'model.layers...';
    an InnerModel root gets them without 'model.'); return (the Outer-relative names of
    the scale parameters now holding `value`, the loaded set, the exception)."""
    inner_root = isinstance(root, InnerModel)
    pre = "model." if inner_root else ""
    rel = name[len("model."):] if inner_root and name.startswith("model.") else name
    fakes = {f"{pre}{mn}": m for mn, m in root.named_modules() if isinstance(m, FakeAttn)}
    e, loaded = catch(lambda: root.load_weights([(rel, torch.tensor(value))]))
    landed = [f"{mn}.{pn}" for mn, m in fakes.items() for pn, p in m.named_parameters(recurse=False) if p.item() == value]
    return landed, loaded, e


@section("NAMES-1", "NAMES-2", "NAMES-3", "NAMES-4", "NAMES-5", "NAMES-6", "NAMES-7", "NAMES-8",
         "NAMES-9", "NAMES-10", "NAMES-11", "NAMES-12", "NAMES-13")
def probe_names():
    # Table: name x config x {alone, composed}
    table = {}
    for cfg in CONFIG_NAMES:
        e, m = catch(lambda cfg=cfg: cache_mapper(cfg))
        for n in producer_names():
            short = n[len(P):]
            if e is not None:
                table[(short, cfg)] = (f"<{exc_str(e)}>", "")
                continue
            composed = llama_mapper() | m
            table[(short, cfg)] = (m.map_name(n), composed._map_name_with_shard(n))
    NAME_TABLE.update(table)

    for rule, src, dst in NAME_CASES:
        for cfg in RULE_CONFIGS[rule]:
            def nm(src=src, dst=dst, cfg=cfg):
                if cfg in NEEDS_CT and not ct_available()[0]:
                    return NA, ct_available()[1]
                alone, composed = table[(src, cfg)]
                want = P + dst
                if cfg == "base":  # abstract class: mapper only, no instance for AutoWeightsLoader
                    return alone == want, f"QuantizationConfig.get_cache_scale_mapper() alone -> {alone!r}; `llama_stacked | cache` -> {composed}"
                root = OuterModel(make_config(cfg))
                landed, loaded, e = load_one(root, P + src)
                want = P + dst
                ok = alone == want and landed == [want] and e is None
                return ok, (f"mapper alone -> {alone!r}; `llama_stacked | cache` -> {composed}; "
                            f"two-level AutoWeightsLoader: {'landed in ' + str(landed) if landed else 'not loaded'}"
                            f"{'; ' + exc_str(e) if e else ''}")

            attempt(rule, f"{cfg}: {src}", nm)

    # single-level composition hazard (stacked before suffix)
    for cfg in ("fp8", "quark"):
        def nm2(cfg=cfg):
            root = InnerModel(make_config(cfg))
            landed, loaded, e = load_one(root, P + "self_attn.k_proj.output_scale")
            return bool(landed) and e is None, (f"root = the stacked-mapper module itself: {exc_str(e) if e else 'ok'}; landed={landed}")

        attempt("NAMES-2", f"{cfg}: k_proj.output_scale when the root itself has the stacked mapper", nm2)

    def n7b():
        root = InnerModel(make_config("fp8"))
        got = {}
        for src, val in (("self_attn.qkv_proj.k_scale", 0.75), ("self_attn.q_proj.k_scale", 0.875)):
            landed, loaded, e = load_one(root, P + src, value=val)
            got[src] = f"landed={landed} {exc_str(e) if e else ''}"
        ok = got["self_attn.qkv_proj.k_scale"].startswith("landed=['" + P + "self_attn.attn.k_scale']")
        return ok, f"(single-level, stacked mapper in the same loader) {got}"

    attempt("NAMES-7", "fp8: fused names through the stacked-mapper loader itself", n7b)

    def n8():
        from vllm.model_executor.layers.attention import Attention, MLAAttention
        obs = {}
        bad = []
        for cfg in ("fp8", "quark", "compressed-tensors", "modelopt"):
            if cfg in NEEDS_CT and not ct_available()[0]:
                obs[cfg] = "compressed-tensors not installed"
                continue
            c = make_config(cfg)
            for cls in (Attention, MLAAttention):
                layer = cls.__new__(cls)
                nn.Module.__init__(layer)
                e, qm = catch(lambda c=c, layer=layer: c.get_quant_method(layer, P + "self_attn.attn"))
                got = exc_str(e) if e else type(qm).__name__
                obs[f"{cfg}/{cls.__name__}"] = got
                if cls is MLAAttention and not (qm is not None and isinstance(qm, BaseKVCacheMethod)):
                    bad.append(cfg)
        return not bad, f"{obs} (get_quant_method on bare instances; MLA without KV method: {bad})"

    attempt("NAMES-8", "KV-cache method attached to MLAAttention per config", n8)

    def n10():
        model_mapper = WeightsMapper(orig_to_new_suffix={".k_proj.output_scale": ".WRONG"})
        composed = (model_mapper | Fp8Config.get_cache_scale_mapper()).map_name(P + "self_attn.k_proj.output_scale")

        class Root(InnerModel):
            def load_weights(self, weights):
                return AutoWeightsLoader(self).load_weights(weights, mapper=model_mapper)

        root = Root(make_config("fp8"))
        landed, loaded, e = load_one(root, P + "self_attn.k_proj.output_scale")
        ok = composed == P + "self_attn.attn.k_scale" and landed == [P + "self_attn.attn.k_scale"]
        return ok, f"model suffix entry '.k_proj.output_scale'->'.WRONG' vs Fp8 cache entry: composed maps to {composed!r}; AutoWeightsLoader landed={landed} {exc_str(e) if e else ''}"

    attempt("NAMES-10", "cache-scale mapper merged to the right of the model mapper", n10)

    def n10b():
        import inspect as _insp
        src = _insp.getsource(AutoWeightsLoader.load_weights)
        return NA, ("(info) 0.33.0 merges: mapper |= quant_config.get_cache_scale_mapper(); "
                    "mapper |= quant_config.get_checkpoint_weight_mapper() (drops '.g_idx'); "
                    f"mapper |= REMOVE_UNUSED_ROTARY_EMBEDS_MAPPER -- present: {'get_checkpoint_weight_mapper' in src}")

    attempt("NAMES-10", "other mappers merged by AutoWeightsLoader (info)", n10b)

    def n12():
        names = [P + s for s in ("self_attn.k_proj.weight", "self_attn.k_proj.weight_scale", "self_attn.k_proj.input_scale",
                                 "self_attn.o_proj.weight", "mlp.down_proj.input_scale", "embed_tokens.weight")]
        moved = {}
        for cfg in CONFIG_NAMES:
            if cfg in NEEDS_CT and not ct_available()[0]:
                continue
            m = cache_mapper(cfg)
            for n in names:
                if m.map_name(n) != n:
                    moved[(cfg, n)] = m.map_name(n)
        return not moved, f"changed: {moved or 'none'} ({len(names)} names x {len(CONFIG_NAMES)} configs)"

    attempt("NAMES-12", "non-scale names unchanged", n12)

    n13_srcs = ("self_attn.k_proj.output_scale", "self_attn.k_proj.k_scale", "self_attn.k_scale",
                "self_attn.kv_scale", "self_attn.qkv_proj.v_scale", "self_attn.prob_output_scale")

    def n13(prefixes):
        m = Fp8Config.get_cache_scale_mapper()
        bad, n = {}, 0
        for pre in prefixes:
            ref = {s: m.map_name(P + s)[len(P):] for s in n13_srcs}
            for s in n13_srcs:
                n += 1
                got = m.map_name(pre + s)
                if got != pre + ref[s]:
                    bad[pre + s] = got
        return not bad, f"{n} names checked against model.layers.0.*; differing: {bad or 'none'}"

    attempt("NAMES-13", "fp8 mapper under prefixes model.layers.0. / language_model.model.layers.3. / layers.7. / model.decoder.layers.11.",
            lambda: n13(("language_model.model.layers.3.", "layers.7.", "model.decoder.layers.11.")))
    attempt("NAMES-13", "edge: empty prefix (a bare 'self_attn.*' name)", lambda: n13(("",)))


NAME_TABLE: dict = {}


# ==========================================================================
# LOAD
# ==========================================================================


@section("LOAD-1", "LOAD-2", "LOAD-3", "LOAD-4", "LOAD-5", "LOAD-6", "LOAD-7", "LOAD-8", "LOAD-9", "LOAD-10")
def probe_load():
    for pshape, wshape in [((), (1, 1)), ((1,), ()), ((1, 1), (1,))]:
        def l1(pshape=pshape, wshape=wshape):
            p = nn.Parameter(torch.zeros(pshape), requires_grad=False)
            w = torch.full(wshape, 0.625, dtype=torch.bfloat16)
            with CopyCounter() as c:
                default_weight_loader(p, w)
            ok = p.flatten()[0].item() == 0.625 and p.shape == pshape and c.copied_numel == 1
            return ok, f"param {pshape} <- weight {wshape} bf16: value {p.flatten()[0].item()}, copied_numel={c.copied_numel}"

        attempt("LOAD-1", f"scalar path {pshape}<-{wshape}", l1)

    def l2():
        p = nn.Parameter(torch.full((2, 3), 7.0), requires_grad=False)
        e, _ = catch(lambda: default_weight_loader(p, torch.zeros(3, 2)))
        untouched = bool((p == 7.0).all())
        ok = isinstance(e, ValueError) and untouched
        return ok, f"{exc_str(e) if e else 'no exception'}; param untouched={untouched}"

    attempt("LOAD-2", "shape mismatch (2,3) <- (3,2)", l2)

    def l2b():
        p = nn.Parameter(torch.full((1,), 7.0), requires_grad=False)
        e, _ = catch(lambda: default_weight_loader(p, torch.zeros(3)))
        return isinstance(e, ValueError), f"one-element param <- (3,): {exc_str(e) if e else 'no exception'}; value {p.item()}"

    attempt("LOAD-2", "one-element param <- 3 elements", l2b)

    def tree():
        root = nn.Module()
        root.inner = nn.Module()
        root.inner.w = nn.Parameter(torch.zeros(2), requires_grad=False)
        root.inner.u = nn.Parameter(torch.zeros(2), requires_grad=False)
        root.inner.register_buffer("pb", torch.zeros(2), persistent=True)
        root.inner.register_buffer("npb", torch.zeros(2), persistent=False)
        return root

    def l3():
        root = tree()
        got = AutoWeightsLoader(root).load_weights([("inner.w", torch.ones(2)), ("inner.pb", torch.ones(2))])
        return got == {"inner.w", "inner.pb"}, f"returned {got!r} (type {type(got).__name__})"

    attempt("LOAD-3", "returns the set of loaded names", l3)

    def l4():
        root = tree()
        e, _ = catch(lambda: AutoWeightsLoader(root).load_weights([("inner.missing", torch.ones(2))]))
        return isinstance(e, ValueError) and "inner.missing" in str(e), exc_str(e) if e else "no exception"

    attempt("LOAD-4", "unknown name", l4)

    def l5():
        sig = __import__("inspect").signature(AutoWeightsLoader.__init__)
        e, _ = catch(lambda: AutoWeightsLoader(tree(), skip_prefixes=["x."]))
        root = tree()
        mapper = WeightsMapper(orig_to_new_prefix={"ckpt.": "inner."})
        e2, got = catch(lambda: AutoWeightsLoader(root, ignore_unexpected_prefixes=["inner.extra"]).load_weights(
            [("ckpt.w", torch.ones(2)), ("ckpt.extra_thing", torch.ones(2))], mapper=mapper))
        return NA, (f"AutoWeightsLoader.__init__{sig}: skip_prefixes -> {exc_str(e) if e else 'accepted'}; "
                    f"skip_prefixes/skip_substrs no longer exist in 0.33.0. Nearest: ignore_unexpected_prefixes is tested on mapped names "
                    f"(ckpt.extra_thing -> inner.extra_thing ignored: {exc_str(e2) if e2 else got})")

    attempt("LOAD-5", "skip prefixes/substrings on mapped names", l5)

    def l6():
        root = tree()
        e, _ = catch(lambda: AutoWeightsLoader(root).load_weights([("inner.w", torch.ones(2)), ("inner.missing", torch.ones(2))]))
        written = root.inner.w.tolist()
        ok = written == [0.0, 0.0] and e is not None
        return ok, f"{exc_str(e)[:90] if e else 'no exception'}...; inner.w after the failed load = {written}"

    attempt("LOAD-6", "earlier weights when a later name is unknown", l6)

    def l6b():
        root = tree()
        e, _ = catch(lambda: AutoWeightsLoader(root).load_weights([("inner.w", torch.ones(2)), ("inner.u", torch.ones(3))]))
        written = root.inner.w.tolist()
        return written == [0.0, 0.0] and e is not None, f"{exc_str(e) if e else 'no exception'}; inner.w after = {written}"

    attempt("LOAD-6", "earlier weights when a later shape mismatches", l6b)

    def l6c():
        root = tree()
        e, _ = catch(lambda: AutoWeightsLoader(root).load_weights([("inner.wx", torch.ones(2))]))
        return ("inner.w" in str(e) and "did you mean" in str(e).lower()), f"close matches listed? message: {exc_str(e)}"

    attempt("LOAD-6", "unknown-name message lists close matches", l6c)

    def l7():
        import inspect as _insp
        from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
        src = _insp.getsource(DefaultModelLoader.load_weights)
        lines = [ln.strip() for ln in src.splitlines() if "quantization" in ln or "not initialized" in ln]
        gated = any("quantization is None" in ln for ln in lines)
        return (not gated), f"(source inspection, DefaultModelLoader.load_weights needs a full model) relevant lines: {lines}"

    attempt("LOAD-7", "missing-parameter check on first load", l7)

    def l8():
        from vllm.model_executor.layers.attention import Attention  # noqa: F401
        a = env().attention(quant_config=None, kv_dtype="auto")
        inner = InnerModel(make_config("fp8"))
        inner.layers[0].self_attn.attn = a  # attention WITHOUT a KV-cache method
        e, got = catch(lambda: inner.load_weights([("layers.0.self_attn.k_scale", torch.tensor(0.5))]))
        ok = e is not None or (got and any("k_scale" in g for g in got))
        return ok, f"{exc_str(e) if e else 'no exception'}; returned {got}; _k_scale={a._k_scale.item()} (silently ignored)"

    attempt("LOAD-8", "self_attn.k_scale on an attention without KV method", l8)

    def l9():
        root = tree()
        got = AutoWeightsLoader(root).load_weights([("inner.pb", torch.ones(2))])
        e, _ = catch(lambda: AutoWeightsLoader(root).load_weights([("inner.npb", torch.ones(2))]))
        ok = got == {"inner.pb"} and root.inner.pb.tolist() == [1.0, 1.0] and e is not None
        return ok, f"persistent loaded: {got}; non-persistent: {exc_str(e)[:110] if e else 'LOADED'}"

    attempt("LOAD-9", "persistent vs non-persistent buffers", l9)

    def l10():
        root = tree()
        e, _ = catch(lambda: AutoWeightsLoader(root).load_weights([("inner.w.sub", torch.ones(2))]))
        return isinstance(e, ValueError) and "inner.w.sub" in str(e), exc_str(e) if e else "no exception"

    attempt("LOAD-10", "name below a parameter", l10)

    def l10b():
        root = tree()
        e, got = catch(lambda: AutoWeightsLoader(root).load_weights([("inner.w.k_scale", torch.ones(1))]))
        return NA, f"(info) 'inner.w.k_scale' with no quant config: {exc_str(e) if e else got}; with '.bias' suffix it is ignored (auto-added)"

    attempt("LOAD-10", "nested name with an ignorable suffix (info)", l10b)


# ==========================================================================
# COUNT
# ==========================================================================


@section("COUNT-1", "COUNT-2", "COUNT-3", "COUNT-5")
def probe_count():
    def c1():
        res = {}
        for shape in [(), (1,), (3, 4)]:
            dst = torch.zeros(shape)
            with CopyCounter() as c:
                dst.copy_(torch.ones(shape))
            res[shape] = c.copied_numel
        dst = torch.zeros(10)
        with CopyCounter() as c:
            dst[:3] = torch.ones(3)
        res["slice[:3]="] = c.copied_numel
        ok = res == {(): 1, (1,): 1, (3, 4): 12, "slice[:3]=": 3}
        return ok, str(res)

    attempt("COUNT-1", "copy_ counted incl. 0-d", c1)

    def c2():
        res = {}
        for name, op in [("fill_", lambda t: t.fill_(1.0)), ("zero_", lambda t: t.zero_()),
                         ("index_copy_", lambda t: t.index_copy_(0, torch.tensor([0, 1]), torch.ones(2))),
                         ("param.data = x", None)]:
            t = torch.zeros(4)
            with CopyCounter() as c:
                if op is None:
                    p = nn.Parameter(torch.zeros(4))
                    p.data = torch.ones(4)
                else:
                    op(t)
            res[name] = c.copied_numel
        return all(v == 0 for v in res.values()), str(res)

    attempt("COUNT-2", "non-copy_ writes not counted", c2)

    def c3():
        p = nn.Parameter(torch.zeros(5), requires_grad=False)

        def twice(param, loaded_weight):
            param.data.copy_(loaded_weight)
            param.data.copy_(loaded_weight * 2)

        import inspect as _insp
        ba = _insp.signature(twice).bind(p, torch.ones(5))
        n, _ = get_numel_loaded(twice, ba)
        with CopyCounter() as c:
            twice(p, torch.ones(5))
        return n == 5, f"get_numel_loaded={n} (raw CopyCounter={c.copied_numel}) for a loader writing a 5-element param twice"

    attempt("COUNT-3", "cap per destination", c3)

    def c5():
        dst = torch.zeros(4)
        e = None
        try:
            with CopyCounter() as c:
                dst.copy_(torch.tensor(3.0))
            n = c.copied_numel
        except Exception as ex:  # noqa: BLE001
            e, n = ex, None
        return (e is None and n == 4), f"broadcasting copy_ (4,) <- (): {exc_str(e) + ' @ ' + _where(e) if e else f'counted {n}'}; dst={dst.tolist()}"

    attempt("COUNT-5", "broadcasting copy_", c5)


# ==========================================================================
# Layerwise reload on real layers (ORDER, RELOAD, COUNT-4, KVPROC-11 after reload)
# ==========================================================================

EVENTS: list[tuple] = []


def spy_processing(model: nn.Module) -> None:
    """Record per-instance processing calls of quant methods and attention layers."""
    from vllm.model_executor.layers.attention import Attention

    for name, mod in model.named_modules():
        qm = getattr(mod, "quant_method", None)
        if qm is not None and hasattr(qm, "process_weights_after_loading") and not getattr(qm, "_spied", False):
            orig = qm.process_weights_after_loading

            def wrapped(layer, _orig=orig, _name=name, _kind=type(qm).__name__):
                EVENTS.append(("quant", _name, _kind))
                return _orig(layer)

            qm.process_weights_after_loading = wrapped
            qm._spied = True
        if isinstance(mod, Attention) and "process_weights_after_loading" not in mod.__dict__:
            orig_l = mod.process_weights_after_loading

            def wrapped_l(act_dtype, _orig=orig_l, _name=name):
                EVENTS.append(("layer_hook", _name, "Attention.process_weights_after_loading"))
                return _orig(act_dtype)

            mod.process_weights_after_loading = wrapped_l


_ORIG_LAYERWISE_PROCESS = vllm_layerwise._layerwise_process


def _spy_layerwise_process(layer, info):
    EVENTS.append(("layerwise_process", getattr(layer, "_probe_name", type(layer).__name__),
                   info.load_numel, info.load_numel_total))
    return _ORIG_LAYERWISE_PROCESS(layer, info)


vllm_layerwise._layerwise_process = _spy_layerwise_process


def build_reload_model(tag: str, attn_first=True):
    """Llama-shaped two-level model of real vLLM layers (FP8 checkpoint, FP8 KV cache),
    built the way vLLM's loader builds models: under the model dtype (bf16) and the
    target device, with record_metadata_for_reloading right after construction."""
    from vllm.model_executor.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear

    E = env()
    qc = Fp8Config(is_checkpoint_fp8_serialized=True, activation_scheme="static")
    cc = E.CacheConfig(cache_dtype="fp8")
    with E.ctx(), _default_dtype(torch.bfloat16), torch.device("cpu"):
        from vllm.model_executor.layers.attention import Attention

        def attn():
            return Attention(num_heads=4, head_size=16, scale=0.25, num_kv_heads=2, cache_config=cc,
                             quant_config=qc, prefix=f"{tag}.model.layers.0.self_attn.attn")

        inner = nn.Module()
        inner.quant_config = qc
        layer = nn.Module()
        sa = nn.Module()
        if attn_first:
            sa.attn = attn()
        sa.qkv_proj = QKVParallelLinear(64, 16, 4, 2, bias=False, quant_config=qc, prefix=f"{tag}.qkv_proj")
        sa.o_proj = RowParallelLinear(64, 64, bias=False, quant_config=qc, prefix=f"{tag}.o_proj")
        if not attn_first:
            sa.attn = attn()
        layer.self_attn = sa
        layer.mlp = nn.Module()
        layer.mlp.fc1 = ColumnParallelLinear(64, 128, bias=False, quant_config=qc, prefix=f"{tag}.fc1")
        layer.mlp.fc2 = RowParallelLinear(128, 64, bias=False, quant_config=qc, prefix=f"{tag}.fc2")
        layer.plain = ColumnParallelLinear(64, 32, bias=True, quant_config=None, prefix=f"{tag}.plain")
        inner.layers = nn.ModuleList([layer])
        inner.load_weights = lambda weights, _m=inner: AutoWeightsLoader(_m).load_weights(weights, mapper=llama_mapper())
        model = nn.Module()
        model.model = inner
        model.load_weights = lambda weights, _m=model: AutoWeightsLoader(_m).load_weights(weights)
        record_metadata_for_reloading(model)
    for n, m in model.named_modules():
        m._probe_name = n
    spy_processing(model)
    return model


LAYERS = {
    "attn": "model.layers.0.self_attn.attn",
    "qkv": "model.layers.0.self_attn.qkv_proj",
    "o": "model.layers.0.self_attn.o_proj",
    "fc1": "model.layers.0.mlp.fc1",
    "fc2": "model.layers.0.mlp.fc2",
    "plain": "model.layers.0.plain",
}


def make_checkpoint(seed: int, scales=None) -> list[tuple[str, torch.Tensor]]:
    """HF-style names (q/k/v_proj separate), FP8 weights with per-shard scalar scales."""
    g = torch.Generator().manual_seed(seed)

    def fp8(o, i):
        return (torch.randn(o, i, generator=g) * 4).to(torch.float8_e4m3fn)

    def sc():
        return torch.tensor(0.01 + torch.rand((), generator=g).item() * 0.05, dtype=torch.float32)

    ck = []
    pre = "model.layers.0."
    for proj, rows in (("q_proj", 64), ("k_proj", 32), ("v_proj", 32)):
        ck += [(f"{pre}self_attn.{proj}.weight", fp8(rows, 64)),
               (f"{pre}self_attn.{proj}.weight_scale", sc()), (f"{pre}self_attn.{proj}.input_scale", sc())]
    for name, (o, i) in (("self_attn.o_proj", (64, 64)), ("mlp.fc1", (128, 64)), ("mlp.fc2", (64, 128))):
        ck += [(f"{pre}{name}.weight", fp8(o, i)), (f"{pre}{name}.weight_scale", sc()), (f"{pre}{name}.input_scale", sc())]
    ck += [(f"{pre}plain.weight", torch.randn(32, 64, generator=g).to(torch.bfloat16)),
           (f"{pre}plain.bias", torch.randn(32, generator=g).to(torch.bfloat16))]
    for k, v in (scales or {}).items():
        ck.append((f"{pre}self_attn.{k}", torch.tensor(v, dtype=torch.float32)))
    return ck


def logged_stream(ck):
    for name, t in ck:
        EVENTS.append(("deliver", name))
        yield name, t


def first_load(model, ck):
    EVENTS.append(("phase", "first_load"))
    loaded = model.load_weights(logged_stream(ck))
    EVENTS.append(("phase", "process"))
    vllm_process(model)
    return loaded


def reload(model, ck):
    EVENTS.append(("phase", "reload"))
    initialize_layerwise_reload(model)
    with LOGS.window() as box:
        loaded = model.load_weights(logged_stream(ck))
        EVENTS.append(("phase", "finalize"))
        finalize_layerwise_reload(model, env().model_config)
    return loaded, msgs(box, logging.WARNING)


def snapshot(model) -> dict:
    from vllm.model_executor.layers.attention import Attention

    st = {}
    for mn, mod in model.named_modules():
        for n, t in itertools.chain(mod._parameters.items(), mod._buffers.items()):
            if t is not None:
                st[f"{mn}.{n}"] = (t.detach().clone(), t.data_ptr(), id(t), n in mod._non_persistent_buffers_set, type(t).__name__)
        if isinstance(mod, Attention):
            for k, v in scale_state(mod).items():
                st[f"{mn}.{k}"] = v
    return st


def diff_states(a: dict, b: dict, values=True, ptrs=False) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in a or k not in b:
            out.append(f"{k}: only in {'after' if k in b else 'before'}")
            continue
        x, y = a[k], b[k]
        if isinstance(x, tuple):
            if values and not same_bits(x[0], y[0]):
                out.append(f"{k}: values differ")
            if ptrs and (x[1] != y[1] or x[2] != y[2]):
                out.append(f"{k}: data_ptr/object changed")
        elif values and not (x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))):
            out.append(f"{k}: {x!r} -> {y!r}")
    return out


def events_since(marker_index: int) -> list[tuple]:
    return EVENTS[marker_index:]


def select(ck, *substrings):
    return [(n, t) for n, t in ck if any(s in n for s in substrings)]


@section("ORDER-1", "ORDER-2", "ORDER-3", "ORDER-4", "RELOAD-1", "RELOAD-2", "RELOAD-3", "RELOAD-4",
         "RELOAD-5", "RELOAD-6", "RELOAD-7", "RELOAD-9", "RELOAD-10", "COUNT-4", "KVPROC-11")
def probe_reload():
    install_fp8_standin()
    A = make_checkpoint(1, {"k_scale": 0.5, "v_scale": 0.25})
    B = make_checkpoint(2, {"k_scale": 2.0, "v_scale": 4.0, "q_scale": 0.125})

    # ---- first load of model 1 (attention registered FIRST) -------------------
    m1 = build_reload_model(env().uid("m"), attn_first=True)
    fc1 = m1.model.layers[0].mlp.fc1
    model_format = {n: (tuple(t.shape), str(t.dtype), type(t).__name__, id(t)) for n, t in fc1.named_parameters()}
    start = len(EVENTS)
    loaded = first_load(m1, A)
    kernel_format = {n: (tuple(t.shape), str(t.dtype), type(t).__name__, id(t)) for n, t in fc1.named_parameters()}
    REPORT_FACTS["fc1_model_format"] = {n: v[:3] for n, v in model_format.items()}
    REPORT_FACTS["fc1_kernel_format"] = {n: v[:3] + (("same object" if model_format.get(n, (0,) * 4)[3] == v[3] else "new object"),)
                                         for n, v in kernel_format.items()}
    REPORT_FACTS["fc1_weight_is_transposed_view"] = not fc1.weight.is_contiguous()
    ev = events_since(start)
    REPORT_FACTS["first_load_returned"] = sorted(loaded)
    REPORT_FACTS["fp8_linear_kernel"] = type(getattr(m1.model.layers[0].mlp.fc1.quant_method, "fp8_linear", None)).__name__
    REPORT_FACTS["standin_calls_after_first_load"] = dict(FP8_STANDIN_CALLS)
    attn1 = m1.model.layers[0].self_attn.attn
    REPORT_FACTS["attn_after_first_load"] = scale_state(attn1)

    def o3():
        order = [e[1] for e in ev if e[0] == "quant"]
        attn_i = order.index(LAYERS["attn"])
        after_all = all(order.index(LAYERS[k]) < attn_i for k in ("qkv", "o", "fc1", "fc2", "plain"))
        return after_all, f"quant-method processing order on first load: {[o.split('.')[-1] for o in order]}; layer hook: {[e[1].split('.')[-1] for e in ev if e[0] == 'layer_hook']}"

    attempt("ORDER-3", "first load: attention (registered first) vs linears", o3)

    def o2a():
        counts = {}
        for e in ev:
            if e[0] in ("quant", "layer_hook"):
                counts[(e[0], e[1].split(".")[-1])] = counts.get((e[0], e[1].split(".")[-1]), 0) + 1
        return all(v == 1 for v in counts.values()) and len(counts) == 7, f"first load: {counts}"

    attempt("ORDER-2", "first load: each layer processed once", o2a)

    ptrs_before = snapshot(m1)

    # ---- full reload with B in checkpoint order ------------------------------
    start = len(EVENTS)
    loaded_b, warns = reload(m1, B)
    ev = events_since(start)
    after_b = snapshot(m1)
    REPORT_FACTS["reload_warnings"] = warns
    REPORT_FACTS["attn_after_reload_B"] = scale_state(attn1)

    def o1():
        procs = [e for e in ev if e[0] in ("layerwise_process", "quant", "layer_hook")]
        names = [e[1] for e in procs]
        attn_idx = [i for i, e in enumerate(procs) if e[1] == LAYERS["attn"]]
        lin_idx = [i for i, e in enumerate(procs) if e[1] != LAYERS["attn"]]
        ok = bool(attn_idx) and max(lin_idx) < min(attn_idx)
        return ok, f"reload processing sequence: {[(e[0][:5], e[1].split('.')[-1]) for e in procs]}"

    attempt("ORDER-1", "reload: attention processed after all linears (registered first)", o1)

    def o2b():
        counts = {}
        for e in ev:
            if e[0] == "quant":
                counts[e[1].split(".")[-1]] = counts.get(e[1].split(".")[-1], 0) + 1
        return all(v == 1 for v in counts.values()) and len(counts) == 6, f"reload: quant-method calls per layer {counts}"

    attempt("ORDER-2", "reload: each layer processed once", o2b)

    def o4():
        bad = []
        obs = []
        seq = [e for e in ev if e[0] in ("deliver", "layerwise_process")]
        for key in ("qkv", "o", "fc1", "fc2", "plain"):
            lname = LAYERS[key]
            stems = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "o": ("self_attn.o_proj",),
                     "fc1": ("mlp.fc1",), "fc2": ("mlp.fc2",), "plain": ("plain.",)}[key]
            deliv = [i for i, e in enumerate(seq) if e[0] == "deliver" and any(s in e[1] for s in stems)]
            proc = [i for i, e in enumerate(seq) if e[0] == "layerwise_process" and e[1] == lname]
            if not proc:
                bad.append(key)
                obs.append(f"{key}: never processed online")
                continue
            last = deliv[-1]
            nxt = next((i for i, e in enumerate(seq) if i > last and e[0] == "deliver"), len(seq))
            good = last < proc[0] < nxt
            obs.append(f"{key}: processed after delivery #{sum(1 for i in deliv if i < proc[0])}/{len(deliv)}")
            if not good:
                bad.append(key)
        return not bad, "; ".join(obs)

    attempt("ORDER-4", "reload: linear processed when its last element arrives", o4)

    def cnt4():
        rows = [(e[1].split(".")[-1], e[2], e[3]) for e in ev if e[0] == "layerwise_process"]
        ok = all(n == t for _, n, t in rows if _ != "attn") and rows
        return ok, f"(layer, counted elements, layer size) at processing: {rows}"

    attempt("COUNT-4", "full load of each layer counts exactly its size", cnt4)

    def r1():
        d = diff_states(ptrs_before, after_b, values=False, ptrs=True)
        return not d, f"{len(ptrs_before)} tensors; changed identity/data_ptr: {d or 'none'}"

    attempt("RELOAD-1", "same objects and data_ptr after reload", r1)

    def kv11():
        st = scale_state(attn1)
        mism = {h: (st[h], st[d]) for h, d in (("_k_scale_float", "_k_scale"), ("_v_scale_float", "_v_scale"),
                                                ("_q_scale_float", "_q_scale"), ("_prob_scale_float", "_prob_scale"),
                                                ("_k_scale_cpu", "_k_scale"), ("_v_scale_cpu", "_v_scale")) if st[h] != st[d]}
        return not mism, f"after reload with k=2,v=4,q=0.125: {fmt_state(st)}; mismatches {mism or 'none'}"

    attempt("KVPROC-11", "host mirrors after reload", kv11)

    # ---- fresh model loaded with B: reference state ---------------------------
    m2 = build_reload_model(env().uid("m"), attn_first=True)
    first_load(m2, B)
    fresh_b = snapshot(m2)

    def r2():
        # keys are module-relative names, so two models compare directly (values only)
        d = diff_states(fresh_b, after_b)
        return not d, f"reload(A->B) vs fresh load(B): differences {d or 'none'}"

    attempt("RELOAD-2", "reload equals a fresh load, bit for bit", r2)

    def r7():
        loaded2, _ = reload(m1, B)
        again = snapshot(m1)
        d = diff_states(after_b, again)
        return not d, f"second reload of B: differences {d or 'none'}"

    attempt("RELOAD-7", "reloading the same checkpoint twice", r7)

    def r10():
        m3 = build_reload_model(env().uid("m"), attn_first=False)
        first_load(m3, A)
        shuffled = list(B)
        random.Random(7).shuffle(shuffled)
        reload(m3, shuffled)
        d = diff_states(fresh_b, snapshot(m3))
        # attention registered last in m3: compare values only
        return not d, f"shuffled/interleaved reload (attention registered last) vs fresh load(B): {d or 'identical'}"

    attempt("RELOAD-10", "order/grouping independence", r10)

    # ---- scale-only reloads --------------------------------------------------
    def r3():
        before = snapshot(m1)
        loaded, warns = reload(m1, [("model.layers.0.self_attn.k_scale", torch.tensor(0.125))])
        st = scale_state(attn1)
        lin_d = [d for d in diff_states(before, snapshot(m1)) if "attn" not in d]
        ok = st["_k_scale"] == 0.125 and st["_v_scale"] == 0.125 and st["_q_scale"] == 1.0
        return ok, f"reload with only k_scale=0.125: {fmt_state(st)}; linears changed: {lin_d or 'none'}; warnings: {warns}"

    attempt("RELOAD-3", "only k: v follows k, q -> 1.0", r3)

    def r4():
        reload(m1, B)  # back to k=2,v=4,q=.125
        st0 = scale_state(attn1)
        loaded, warns = reload(m1, [x for x in B if "_scale" not in x[0] or "proj" in x[0] or "fc" in x[0]])
        st = scale_state(attn1)
        return st == st0, f"before {fmt_state(st0)}; after linears-only reload {fmt_state(st)}"

    attempt("RELOAD-4", "attention receiving nothing keeps scales and mirrors", r4)

    def r5():
        before = snapshot(m1)
        loaded, warns = reload(m1, [("model.layers.0.self_attn.k_scale", torch.tensor(2.0)),
                                    ("model.layers.0.self_attn.v_scale", torch.tensor(4.0)),
                                    ("model.layers.0.self_attn.q_scale", torch.tensor(0.125))])
        d = [x for x in diff_states(before, snapshot(m1)) if "attn" not in x]
        failed = [w for w in warns if "Failed to load weights" in w]
        return not d, f"linears changed: {d or 'none'}; warnings: {failed}"

    attempt("RELOAD-5", "linear receiving nothing keeps values", r5)

    def r6():
        before = snapshot(m1)
        C = make_checkpoint(3)
        part = [x for x in select(C, "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj") if not x[0].endswith("v_proj.weight")]
        part += select(C, "mlp.fc1.weight")  # fc1 without its weight_scale/input_scale
        e, res = catch(lambda: reload(m1, part))
        after = snapshot(m1)
        qkv = m1.model.layers[0].self_attn.qkv_proj
        fc1 = m1.model.layers[0].mlp.fc1
        old_w = before[LAYERS["qkv"] + ".weight"][0]
        kept_v = None
        try:
            # weight may be stored transposed in kernel format; compare the v rows of the logical (out,in) view
            w_new = qkv.weight.detach()
            w_old = old_w
            if w_new.shape[0] != 128:
                w_new, w_old = w_new.t(), w_old.t()
            kept_v = same_bits(w_new[96:128], w_old[96:128])
            kept_qk = not same_bits(w_new[:96], w_old[:96])
            kept_v = f"{kept_v} (q/k rows took the new checkpoint={kept_qk}; v rows now all zero={bool((w_new[96:128].float() == 0).all())})"
        except Exception as ex:  # noqa: BLE001
            kept_v = f"? {exc_str(ex)}"
        fc1_ws_before = before[LAYERS["fc1"] + ".weight_scale"][0]
        obs = (f"{exc_str(e) if e else 'no error at finalize'}; qkv (v_proj.weight missing): v rows kept old bits={kept_v}; "
               f"fc1 (scales missing): weight_scale {fc1_ws_before.flatten().tolist()} -> {fc1.weight_scale.detach().flatten().tolist()}, "
               f"input_scale -> {getattr(fc1, 'input_scale', None).detach().flatten().tolist() if getattr(fc1, 'input_scale', None) is not None else None}")
        ok = isinstance(e, ValueError) and not diff_states(before, after)
        return ok, obs

    attempt("RELOAD-6", "partial reload of a layer", r6)

    def r9():
        reload(m1, B)
        fc2 = m1.model.layers[0].mlp.fc2
        before = fc2.weight.detach().clone()
        C = make_checkpoint(4)
        dup = select(B, "mlp.fc2") + [(n, t) for n, t in C if n.endswith("mlp.fc2.weight")]  # complete fc2, then one more weight
        n_logs = len(LOGS.records)
        e, res = catch(lambda: reload(m1, dup))
        after = fc2.weight.detach()
        excessive = [m for m in msgs(LOGS.records[n_logs:]) if "Excessive loading" in m]
        kept = same_bits(before, after)
        return isinstance(e, ValueError), (f"{exc_str(e) if e else 'no error'}; fc2.weight after = first (B) value: {kept}; "
                                           f"debug log 'Excessive loading' seen {len(excessive)}x: {excessive}")

    attempt("RELOAD-9", "load after the layer was processed (same load_weights call)", r9)

    def r9_split(key, stem):
        def run():
            reload(m1, B)
            mod = m1.get_submodule(LAYERS[key])
            before = mod.weight.detach().clone()
            C = make_checkpoint(5)
            late = [(n, t) for n, t in C if n == stem + ".weight"]
            n_logs = len(LOGS.records)
            EVENTS.append(("phase", "reload-split"))
            initialize_layerwise_reload(m1)
            m1.load_weights(logged_stream(select(B, stem)))        # call 1: the complete layer
            loader_name = getattr(mod.weight, "weight_loader", default_weight_loader).__name__
            e, _ = catch(lambda: m1.load_weights(logged_stream(late)))  # call 2: one more weight
            finalize_layerwise_reload(m1, env().model_config)
            after = mod.weight.detach()
            excessive = [m for m in msgs(LOGS.records[n_logs:]) if "Excessive loading" in m]
            changed = not same_bits(before, after)
            raw = late[0][1]
            raw_written = after.shape == raw.shape and same_bits(after, raw) or (
                after.t().shape == raw.shape and same_bits(after.t().contiguous(), raw))
            return isinstance(e, ValueError), (
                f"{stem}: after call 1 the registered weight's loader is {loader_name!r}; call 2 -> "
                f"{(exc_str(e) + ' @ ' + _where(e)) if e else 'no error'}; kernel weight changed={changed}; holds the raw checkpoint bits "
                f"(unprocessed)={raw_written}; 'Excessive loading' logs={len(excessive)}")
        return run

    attempt("RELOAD-9", "late weight in a SECOND load_weights call, fp8 RowParallel 128->64 (kernel weight is a transposed view)",
            r9_split("fc2", "model.layers.0.mlp.fc2"))
    attempt("RELOAD-9", "late weight in a SECOND load_weights call, fp8 RowParallel 64->64 (square)",
            r9_split("o", "model.layers.0.self_attn.o_proj"))
    attempt("RELOAD-9", "late weight in a SECOND load_weights call, unquantized ColumnParallel",
            r9_split("plain", "model.layers.0.plain"))


@section("RELOAD-8")
def probe_tied():
    from vllm.model_executor.layers.linear import ColumnParallelLinear

    E = env()
    with E.ctx(), _default_dtype(torch.bfloat16):
        root = nn.Module()
        root.a = ColumnParallelLinear(8, 4, bias=False, quant_config=None, prefix=E.uid("tie.a"))
        root.b = ColumnParallelLinear(8, 4, bias=False, quant_config=None, prefix=E.uid("tie.b"))
        root.b.weight = root.a.weight
        record_metadata_for_reloading(root)
    w0 = torch.randn(4, 8).to(torch.bfloat16)
    root.a.weight.weight_loader(root.a.weight, w0)
    vllm_process(root)

    def t8():
        obj = root.a.weight
        w1 = torch.randn(4, 8).to(torch.bfloat16)
        initialize_layerwise_reload(root)
        with LOGS.window() as box:
            p = root.a.weight
            p.weight_loader(p, w1)
            finalize_layerwise_reload(root, E.model_config)
        tied = root.a.weight is root.b.weight
        ok = tied and root.a.weight is obj and same_bits(root.b.weight.detach(), w1)
        return ok, (f"a.weight is b.weight={tied}; same object as before={root.a.weight is obj}; b holds new value="
                    f"{same_bits(root.b.weight.detach(), w1)}; warnings={msgs(box, logging.WARNING)}")

    attempt("RELOAD-8", "tied parameter across two ColumnParallelLinear", t8)


REPORT_FACTS: dict = {}


# ==========================================================================
# main
# ==========================================================================


def main(argv=None) -> int:
    global VERBOSE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="also write results as JSON to this path")
    ap.add_argument("--only", help="comma-separated rule families or section names to run")
    ap.add_argument("--quiet", action="store_true", help="print only the final table")
    args = ap.parse_args(argv)
    VERBOSE = not args.quiet
    rules = load_rules()
    wanted = set(args.only.split(",")) if args.only else None

    print(f"vllm {vllm.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}, "
          f"VLLM_TARGET_DEVICE={os.environ.get('VLLM_TARGET_DEVICE')}; vLLM imports took {IMPORT_SECONDS:.1f}s", flush=True)
    t_all = time.time()
    for name, rule_ids, fn in SECTIONS:
        fams = {r.rsplit("-", 1)[0] for r in rule_ids}
        if wanted and not (wanted & fams or name in wanted):
            continue
        print(f"== {name} ({', '.join(rule_ids)})", flush=True)
        t = time.time()
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            tb = traceback.format_exc(limit=4)
            for r in rule_ids:
                record(r, f"section {name} aborted", ERROR, f"{exc_str(e)} @ {_where(e)}")
            print(tb, file=sys.stderr)
        print(f"   ({time.time() - t:.1f}s)", flush=True)

    # final table
    print("\n" + "=" * 100)
    print(f"{'rule':10} {'level':6} {'verdict':10} {'expected':9}  observed (first failing / first sub-check)")
    print("-" * 100)
    table = []
    ids = list(rules) if rules else sorted(RESULTS)
    for rid in ids + [r for r in RESULTS if r not in rules]:
        res = RESULTS.get(rid, RuleResult(rid))
        r = rules.get(rid)
        level = r.level if r else "?"
        expected = (FAIL if (r and r.level == "SHOULD" and r.vllm_differs) else PASS) if r else "?"
        if wanted and res.verdict == "NOT PROBED":
            continue
        key = next((s for s in res.subs if s.verdict in (FAIL, ERROR)), res.subs[0] if res.subs else None)
        obs = f"{key.label}: {key.observed}" if key else ""
        flag = "" if res.verdict in (expected, NA, "NOT PROBED") else "  <-- differs from rules.py expectation"
        print(f"{rid:10} {level:6} {res.verdict:10} {expected:9}  {_short(obs, 160)}{flag}")
        table.append({"rule": rid, "level": level, "verdict": res.verdict, "expected": expected,
                      "subs": [s.__dict__ for s in res.subs]})
    counts = {}
    for row in table:
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    print("-" * 100)
    print(f"totals: {counts}; fp8 stand-in calls: {FP8_STANDIN_CALLS}; total {time.time() - t_all:.1f}s")
    if args.json:
        out = {
            "vllm": vllm.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
            "import_seconds": IMPORT_SECONDS,
            "setup_seconds": _ENV.setup_seconds if _ENV else None,
            "rules": table, "facts": REPORT_FACTS, "fp8_standin_calls": FP8_STANDIN_CALLS,
            "name_table": {f"{k[0]} | {k[1]}": [str(v[0]), str(v[1])] for k, v in NAME_TABLE.items()},
        }
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
