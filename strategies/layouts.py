"""Checkpoint layouts: which producer wrote a spec's checkpoint, in what order and shards, and what is off.

A ``CheckpointLayout`` is plain data (JSON round-trips); ``tensors()`` builds the
checkpoint in memory and ``write(directory)`` puts it on disk as safetensors
shards plus ``config.json``, the way ``huggingface_hub`` and ``transformers`` do.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from safetensors.torch import save_file

from loadspec.reference.checkpoint import INDEX_FILE, SINGLE_FILE
from loadspec.reference.spec import ModelSpec
from loadspec.reference.vocabulary import HEAD_KINDS, SCALE_KINDS, torch_dtype
from loadspec.strategies._validation import check_choices, check_flag, check_strategy
from loadspec.strategies.producers import PRODUCERS, quantization_config
from loadspec.strategies.scales import keeps_meaning, kv_scale_sets, scale_values, stored_as
from loadspec.strategies.synthetic import KVValues, kv_scale_tensors, synthetic_checkpoint

__all__ = ["CheckpointLayout", "checkpoint_layouts", "compatible_producers", "ORDERS", "HEAD_KINDS", "HeadValues",
           "head_scale_name", "head_scale_tensors"]

ORDERS = ("file", "sorted", "shuffled", "interleaved", "reversed")
SCALE_DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                     "float64": torch.float64}
_LAYER = re.compile(r"\.layers\.(\d+)\.")
HEAD_PRODUCER = "compressed-tensors"
"""The producer that writes per-head KV-cache scales (``kv_cache_scheme.strategy: attn_head``) [HEADS-1]."""

HeadValues = dict[int, dict[str, tuple[float, ...]]]
"""Layer index -> scale kind -> one value per head (``num_heads`` for q, ``num_kv_heads`` for k and v)."""


def head_scale_name(spec: ModelSpec, index: int, kind: str) -> str:
    """The checkpoint name of layer ``index``'s per-head ``kind`` scale (compressed-tensors, NAMES-1) [HEADS-1]."""
    name = PRODUCERS[HEAD_PRODUCER].scale_name(f"{spec.layer_prefix(index)}{spec.container}.", kind)
    if name is None:
        raise ValueError(f"compressed-tensors writes no {kind} scale")
    return name


def head_scale_tensors(spec: ModelSpec, values: HeadValues, *,
                       dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The per-head scale tensors of ``values``: ``(heads, 1, 1)`` in ``dtype`` (default: the model's, as
    llm-compressor writes them) [HEADS-1]."""
    dtype = torch_dtype(spec.params_dtype) if dtype is None else dtype
    return {head_scale_name(spec, index, kind): torch.tensor(heads, dtype=dtype).reshape(-1, 1, 1)
            for index, kinds in values.items() for kind, heads in kinds.items()}


@dataclass(frozen=True)
class CheckpointLayout:
    """One checkpoint of ``spec``: producer layout, values, tensor order, sharding, missing and extra tensors.

    ``kv_scales`` maps a scale kind to its value (``None``: not written);
    ``scale_dtype`` overrides the producer's KV-scale dtype; ``linear_scale_dtype`` stores every ``weight_scale``
    and ``input_scale`` in that dtype instead of the producer's [DTYPE-2]; ``max_shard_size`` is
    in bytes (``None``: one file); ``missing`` names checkpoint tensors left out;
    ``extra`` adds ``(name, shape)`` zero tensors no model parameter takes. ``head_scales`` (compressed-tensors
    only), when not empty, replaces every KV-cache scale with per-head ``(heads, 1, 1)`` tensors of those values
    [HEADS-1]. ``replaced`` sets ``(name, shape, values)`` tensors last: ``values`` shaped ``shape`` in the dtype of
    the tensor they replace (float32 for a new name, appended), e.g. a per-head scale of the wrong shape [HEADS-2,
    HEADS-6]. A spec with static activations gets every FP8 projection's ``input_scale`` [STATIC-1], so the
    layout alone rebuilds (and ``write`` puts on disk) the whole checkpoint a test loaded.

    .. code-block:: pycon

        >>> layout = CheckpointLayout(DEFAULT_SPEC, producer="autofp8", kv_scales={"k": 0.5}, max_shard_size=4096)
        >>> layout.tensors()[-1]
        ('model.layers.1.self_attn.k_scale', tensor(0.5000))
        >>> sorted(path.name for path in layout.write("ckpt").iterdir())
        ['config.json', 'model-00001-of-00005.safetensors', ..., 'model.safetensors.index.json']
    """

    spec: ModelSpec
    producer: str = "canonical"
    seed: int = 0
    kv_scales: dict[str, float | None] = field(default_factory=dict)
    scale_dtype: str | None = None
    linear_scale_dtype: str | None = None
    order: str = "file"
    order_seed: int = 0
    max_shard_size: int | None = None
    missing: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[int, ...]], ...] = ()
    head_scales: HeadValues = field(default_factory=dict)
    replaced: tuple[tuple[str, tuple[int, ...], tuple[float, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.producer not in PRODUCERS:
            raise ValueError(f"producer={self.producer!r}, but should be one of {tuple(PRODUCERS)}")
        if self.order not in ORDERS:
            raise ValueError(f"order={self.order!r}, but should be one of {ORDERS}")
        for name in ("scale_dtype", "linear_scale_dtype"):
            if getattr(self, name) is not None and getattr(self, name) not in SCALE_DTYPE_NAMES:
                raise ValueError(f"{name}={getattr(self, name)!r}, but should be None or one of "
                                 f"{tuple(SCALE_DTYPE_NAMES)}")
        unknown = set(self.kv_scales) - set(SCALE_KINDS)
        if unknown:
            raise ValueError(f"kv_scales has kinds {sorted(unknown)}, but should only have {SCALE_KINDS}")
        if self.head_scales and self.producer != HEAD_PRODUCER:
            raise ValueError(f"producer={self.producer!r} with head_scales, but per-head scales are written by "
                             f"{HEAD_PRODUCER!r}")
        unknown = {kind for kinds in self.head_scales.values() for kind in kinds} - set(HEAD_KINDS)
        if unknown:
            raise ValueError(f"head_scales has kinds {sorted(unknown)}, but should only have {HEAD_KINDS}")

    # ----------------------------------------------------------- in memory
    def _base(self) -> dict[str, torch.Tensor]:
        """The producer's checkpoint in file order, before ``missing`` and ``extra``."""
        dtype = None if self.scale_dtype is None else SCALE_DTYPE_NAMES[self.scale_dtype]
        linear = None if self.linear_scale_dtype is None else SCALE_DTYPE_NAMES[self.linear_scale_dtype]
        state = synthetic_checkpoint(self.spec, producer=self.producer, seed=self.seed,
                                     kv_scales=dict(self.kv_scales), scale_dtype=dtype, linear_scale_dtype=linear)
        if not self.head_scales:
            return state
        per_tensor = set(self._per_tensor_scale_names())
        state = {name: tensor for name, tensor in state.items() if name not in per_tensor}
        state.update(head_scale_tensors(self.spec, self.head_scales, dtype=dtype))
        return state

    def _per_tensor_scale_names(self) -> tuple[str, ...]:
        return tuple(name for index in range(len(self.spec.layers))
                     for name in kv_scale_tensors(self.spec, index, producer=self.producer,
                                                  kv_scales=dict(self.kv_scales)))

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` pairs in this layout's order, ``missing`` removed and ``extra`` added."""
        missing = set(self.missing)
        state = {name: tensor for name, tensor in self._base().items() if name not in missing}
        state.update((name, torch.zeros(shape)) for name, shape in self.extra)
        ordered = [(name, state[name]) for name in _ordered(list(state), self.order, self.order_seed)]
        replaced = {name: torch.tensor(values, dtype=state[name].dtype if name in state else torch.float32
                                       ).reshape(shape) for name, shape, values in self.replaced}
        return ([(name, replaced.get(name, tensor)) for name, tensor in ordered]
                + [(name, tensor) for name, tensor in replaced.items() if name not in state])

    @property
    def kv_scale_names(self) -> tuple[str, ...]:
        """Checkpoint names of the KV-cache scales this layout writes (before ``missing``; per head with
        ``head_scales``)."""
        if self.head_scales:
            return tuple(head_scale_tensors(self.spec, self.head_scales))
        return self._per_tensor_scale_names()

    def config(self) -> dict[str, Any]:
        """The ``config.json`` of this checkpoint: a Llama-style (DeepSeek-V2 for MLA) HF config."""
        spec = self.spec
        config: dict[str, Any] = {
            "architectures": ["DeepseekV2ForCausalLM" if spec.attention == "mla" else "LlamaForCausalLM"],
            "model_type": "deepseek_v2" if spec.attention == "mla" else "llama",
            "hidden_size": spec.hidden_size, "num_attention_heads": spec.num_heads,
            "num_key_value_heads": spec.num_kv_heads, "head_dim": spec.head_dim,
            "intermediate_size": spec.intermediate_size, "num_hidden_layers": len(spec.layers),
            "vocab_size": spec.vocab_size, "tie_word_embeddings": spec.tie_embeddings,
            "rms_norm_eps": spec.rms_norm_eps, "rope_theta": spec.rope_theta, "torch_dtype": spec.params_dtype,
            "hidden_act": "silu", "loadspec_spec": asdict(spec),
        }
        if spec.attention == "mla":
            config.update(kv_lora_rank=spec.kv_lora_rank, qk_rope_head_dim=spec.qk_rope_head_dim,
                          qk_nope_head_dim=spec.head_dim, v_head_dim=spec.head_dim, q_lora_rank=None)
        if spec.quant_method is not None:
            schemes = {q for layer in spec.layers for q in layer.linear_quants().values() if q != "none"}
            strategy = "channel" if schemes == {"fp8_per_channel"} else "tensor"
            config["quantization_config"] = quantization_config(
                self.producer, weight_strategy=strategy, kv_scale_strategy=spec.kv_scale_strategy,
                activation_scheme="static" if spec.static_input_scales else "dynamic")  # [STATIC-1, HEADS-1]
        return config

    # --------------------------------------------------------------- on disk
    def write(self, directory: str | Path) -> Path:
        """Write the shards, the index (when sharded) and ``config.json`` into ``directory``; return it.

        ``huggingface_hub`` plans the shards from this layout's order (a tensor over
        ``max_shard_size`` gets a shard of its own); the index lists names in this
        order; within one file safetensors stores tensors sorted by dtype and name.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / INDEX_FILE).exists() or any(directory.glob("*.safetensors")):
            raise FileExistsError(f"{directory} already holds a checkpoint")
        state = {name: tensor.contiguous().clone() for name, tensor in self.tensors()}
        if self.max_shard_size is None:
            plan = {SINGLE_FILE: list(state)}
        else:
            split = split_torch_state_dict_into_shards(state, max_shard_size=self.max_shard_size)
            plan = split.filename_to_tensors
        for filename, names in plan.items():
            save_file({name: state[name] for name in names}, str(directory / filename), metadata={"format": "pt"})
        if len(plan) > 1:
            files = {name: filename for filename, names in plan.items() for name in names}
            index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                     "weight_map": {name: files[name] for name in state}}
            (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))
        (directory / "config.json").write_text(json.dumps(self.config(), indent=2, sort_keys=True))
        return directory

    # ----------------------------------------------------------- reporting
    def summary(self) -> str:
        """One short line for reports."""
        spec = self.spec
        scales = ",".join(f"{k}={v:g}" for k, v in self.kv_scales.items() if v is not None) or "none"
        if self.head_scales:
            scales = "per-head " + ";".join(f"L{i}:" + ",".join(f"{k}={list(v)}" for k, v in kinds.items())
                                            for i, kinds in self.head_scales.items())
        order = f"{self.order}/{self.order_seed}" if self.order == "shuffled" else self.order
        shards = "1 file" if self.max_shard_size is None else f"shards<={self.max_shard_size}B"
        off = "".join([f" missing={len(self.missing)}" if self.missing else "",
                       f" extra={len(self.extra)}" if self.extra else "",
                       "".join(f" {name}{list(shape)}" for name, shape, _ in self.replaced)])
        return (f"{spec.attention} L{len(spec.layers)} {spec.quant_method or 'unquantized'} kv={spec.kv_cache_dtype} "
                f"{spec.params_dtype} | {self.producer} seed={self.seed} scales[{scales}] "
                f"dtype={self.scale_dtype or 'producer'}"
                + (f" linear-scales={self.linear_scale_dtype}" if self.linear_scale_dtype else "")
                + f" {order} {shards}{off}")

    def to_json(self) -> str:
        """The layout as JSON, for reproducers (NaN and infinities as JSON extensions)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CheckpointLayout:
        """Inverse of ``to_json``."""
        raw = json.loads(text)
        raw["spec"] = ModelSpec.from_json(json.dumps(raw["spec"]))
        raw["missing"] = tuple(raw["missing"])
        raw["extra"] = tuple((name, tuple(shape)) for name, shape in raw["extra"])
        raw["replaced"] = tuple((name, tuple(shape), tuple(values)) for name, shape, values in raw.get("replaced", ()))
        raw["head_scales"] = {int(index): {kind: tuple(heads) for kind, heads in kinds.items()}
                              for index, kinds in raw.get("head_scales", {}).items()}
        return cls(**raw)


def _ordered(names: list[str], order: str, seed: int) -> list[str]:
    """``names`` in ``order``; ``interleaved`` takes one name per layer in turn (global names form a group)."""
    if order == "sorted":
        return sorted(names)
    if order == "reversed":
        return names[::-1]
    if order == "shuffled":
        names = list(names)
        random.Random(seed).shuffle(names)
        return names
    if order == "interleaved":
        groups: dict[int, list[str]] = {}
        for name in names:
            match = _LAYER.search(name)
            groups.setdefault(int(match.group(1)) if match else -1, []).append(name)
        rounds = itertools.zip_longest(*groups.values())
        return [name for row in rounds for name in row if name is not None]
    return list(names)


def compatible_producers(spec: ModelSpec) -> tuple[str, ...]:
    """Producers writing ``spec.quant_method``'s checkpoints (every producer when it has none)."""
    if spec.quant_method is None:
        return tuple(PRODUCERS)
    return tuple(p.id for p in PRODUCERS.values() if p.quant_method == spec.quant_method)


@st.composite
def checkpoint_layouts(draw: st.DrawFn, graph: ModelSpec, *, producers: Iterable[str] | None = None,
                       orders: Iterable[str] = ORDERS, allow_sharding: bool = True, allow_missing: bool = False,
                       allow_extra: bool = False, kv_scales: st.SearchStrategy[KVValues] | None = None
                       ) -> CheckpointLayout:
    """Draws ``CheckpointLayout``s: checkpoints of the model ``graph`` as one producer wrote them.

    * ``producers``: producer ids (default: those of ``graph.quant_method``; the
      reference maps every producer's names under every config [NAMES-2], so others may be named;
      ``config.json`` always carries the producer's ``quantization_config``).
    * ``orders``: tensor orders drawn from ``ORDERS``.
    * ``allow_sharding``: draw ``max_shard_size`` below the total size (always several shards) or ``None``.
    * ``allow_missing``/``allow_extra``: draw required tensors left out [LOAD-7] / unknown tensors
      added [LOAD-4, LOAD-10]; either makes a first load fail.
    * ``kv_scales``: strategy for the scale values (default
      ``kv_scale_sets(values=scale_values(allow_sentinel=False))``); ignored when
      ``graph.quant_method`` is ``None``, which writes no KV-cache scales.

    Finite scale values are clamped into the range of the dtype the producer writes
    them in (1e30 becomes 65504 in a float16 model), and a ``scale_dtype`` override is
    only drawn when it keeps every value valid, invalid or the sentinel. Bad arguments raise
    ``InvalidArgument`` when a layout is drawn, not when this is called.

    .. code-block:: pycon

        >>> checkpoint_layouts(DEFAULT_SPEC).example().summary()
        'mha L2 fp8 kv=fp8_e4m3 float32 | bare-prob-scale seed=25 scales[k=1] dtype=bfloat16 sorted shards<=317B'
    """
    if not isinstance(graph, ModelSpec):
        raise InvalidArgument(f"graph={graph!r}, but should be a ModelSpec")
    producers = compatible_producers(graph) if producers is None else check_choices("producers", producers,
                                                                                    tuple(PRODUCERS))
    orders = check_choices("orders", orders, ORDERS)
    for name, flag in (("allow_sharding", allow_sharding), ("allow_missing", allow_missing),
                       ("allow_extra", allow_extra)):
        check_flag(name, flag)
    if kv_scales is None:
        kv_scales = kv_scale_sets(values=scale_values(allow_sentinel=False))
    check_strategy("kv_scales", kv_scales)
    return draw(_layouts(graph, producers=producers, orders=orders, allow_sharding=allow_sharding,
                         allow_missing=allow_missing, allow_extra=allow_extra, kv_scales=kv_scales))


@st.composite
def _layouts(draw: st.DrawFn, graph: ModelSpec, *, producers: tuple[str, ...], orders: tuple[str, ...],
             allow_sharding: bool, allow_missing: bool, allow_extra: bool,
             kv_scales: st.SearchStrategy[KVValues]) -> CheckpointLayout:
    producer = draw(st.sampled_from(producers))
    scales = dict(draw(kv_scales)) if graph.quant_method is not None else {}
    if not set(scales) <= set(SCALE_KINDS):
        raise InvalidArgument(f"kv_scales drew {scales!r}, but its keys should be among {SCALE_KINDS}")
    written = _producer_scale_dtype(graph, producer)
    scales = {kind: None if value is None else _fit(value, written) for kind, value in scales.items()}
    assume(all(keeps_meaning(value, written) for value in scales.values() if value is not None))
    order = draw(st.sampled_from(orders))
    layout = CheckpointLayout(
        graph, producer=producer, seed=draw(st.integers(0, 2**16)), kv_scales=scales,
        scale_dtype=draw(st.sampled_from(_scale_dtype_names(scales, written))), order=order,
        order_seed=draw(st.integers(0, 2**16)) if order == "shuffled" else 0)
    if allow_missing:
        required = sorted(set(layout._base()) - set(layout.kv_scale_names))
        layout = replace(layout, missing=tuple(draw(st.lists(st.sampled_from(required), unique=True, max_size=3))))
    if allow_extra:
        extra = st.tuples(_extra_names(graph), st.lists(st.integers(1, 4), max_size=2).map(tuple))
        layout = replace(layout, extra=tuple(draw(st.lists(extra, unique_by=lambda e: e[0], max_size=3))))
    if allow_sharding:
        tensors = [t for _, t in layout.tensors()]
        total = sum(t.numel() * t.element_size() for t in tensors)
        if len(tensors) > 1:
            layout = replace(layout, max_shard_size=draw(st.none() | st.integers(1, total - 1)))
    return layout


def _producer_scale_dtype(spec: ModelSpec, producer: str) -> torch.dtype:
    """The dtype ``producer`` writes ``spec``'s KV-cache scales in (before any ``scale_dtype`` override)."""
    return torch.float32 if PRODUCERS[producer].scale_dtype == "float32" else torch_dtype(spec.params_dtype)


def _fit(value: float, dtype: torch.dtype) -> float:
    """A finite ``value`` clamped into ``dtype``'s finite range (a positive one to at least its smallest
    subnormal), so writing it neither overflows nor turns a valid scale into 0."""
    if not math.isfinite(value):
        return value
    info = torch.finfo(dtype)
    value = min(max(value, -info.max), info.max)
    return max(value, info.tiny * info.eps) if value > 0 else value


def _scale_dtype_names(scales: KVValues, written: torch.dtype) -> list[str | None]:
    """``None`` (the producer's dtype) and the override dtypes that keep every written value's meaning."""
    values = [stored_as(v, written) for v in scales.values() if v is not None]
    return [None] + [name for name, dtype in SCALE_DTYPE_NAMES.items()
                     if all(keeps_meaning(v, dtype) for v in values)]


def _extra_names(spec: ModelSpec) -> st.SearchStrategy[str]:
    """Names no parameter takes: new modules under the model, a layer or its container, or below a parameter."""
    parents = [spec.prefix] + [p for i in range(len(spec.layers))
                               for p in (spec.layer_prefix(i), f"{spec.layer_prefix(i)}{spec.container}.")]
    leaves = st.sampled_from(("loadspec_extra.weight", "loadspec_extra_buffer"))
    below = st.just(f"{spec.prefix}norm.weight.loadspec_extra")
    return st.tuples(st.sampled_from(parents), leaves).map("".join) | below
