"""Strategies for model graphs: small random ``ModelSpec``s that the reference builds."""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from loadspec.reference.spec import LayerSpec, ModelSpec
from loadspec.reference.vocabulary import (
    ATTENTION_KINDS,
    CONTAINERS,
    KV_CACHE_DTYPES,
    LINEAR_QUANTS,
    PARAM_DTYPES,
    PER_CHANNEL_METHODS,
    QUANT_METHODS,
)
from loadspec.strategies._validation import check_bounds, check_choices, check_flag

__all__ = ["layer_graphs", "CHOICES", "DEFAULT_KV_CACHE_DTYPES"]

UNQUANTIZED_ONLY_KV_DTYPES = ("fp8_e5m2",)  # KVPROC-10: raises at build under a quant config
DEFAULT_KV_CACHE_DTYPES = tuple(d for d in KV_CACHE_DTYPES if d not in UNQUANTIZED_ONLY_KV_DTYPES)
WRAPPERS = ((), ("language_model",), ("outer", "language_model"))
CHOICES = {"attention": ATTENTION_KINDS, "linear_quants": LINEAR_QUANTS, "kv_cache_dtypes": KV_CACHE_DTYPES,
           "containers": CONTAINERS, "params_dtypes": PARAM_DTYPES}
"""Every value each choice argument of ``layer_graphs`` accepts."""
HEAD_DIMS = (2, 4, 8)
MAX_HEADS = 4


@st.composite
def layer_graphs(draw: st.DrawFn, *, min_layers: int = 1, max_layers: int | None = 3,
                 attention: Iterable[str] = ATTENTION_KINDS, linear_quants: Iterable[str] = LINEAR_QUANTS,
                 kv_cache_dtypes: Iterable[str] = DEFAULT_KV_CACHE_DTYPES,
                 quant_methods: Iterable[str] = QUANT_METHODS, allow_unquantized: bool = True,
                 allow_tied: bool = True, allow_wrappers: bool = True, containers: Iterable[str] = CONTAINERS,
                 params_dtypes: Iterable[str] = PARAM_DTYPES, max_hidden: int = 32,
                 allow_sinks: bool = False, allow_per_channel_any_format: bool = True) -> ModelSpec:
    """Draws ``ModelSpec``s: small decoder models that ``loadspec.reference.build`` accepts.

    * ``min_layers``/``max_layers`` bound the number of decoder layers (``None``: ``max(min_layers, 3)``).
    * ``attention``, ``linear_quants``, ``kv_cache_dtypes``, ``quant_methods``, ``containers`` and
      ``params_dtypes`` are the choices drawn from; per-layer quant schemes are drawn per linear.
    * ``allow_unquantized``: whether ``quant_method`` may be ``None`` (then every linear is ``"none"``).
      ``quant_methods=()`` with ``allow_unquantized`` draws unquantized models only.
      ``"fp8_e5m2"`` is drawn only with ``quant_method=None`` [KVPROC-10].
    * ``allow_tied``/``allow_wrappers``: tied embeddings; wrappers ``("language_model",)`` etc.
    * ``max_hidden`` bounds ``hidden_size`` (a multiple of the head count).
    * ``allow_sinks``: whether a layer's attention may own ``sinks`` besides its KV-cache scales [RELOAD-15].
    * ``allow_per_channel_any_format``: whether ``fp8_per_channel`` linears may be drawn under a quant
      format whose config cannot state them (``fp8``, ``modelopt``); ``False`` draws them only where a real
      producer writes them (``vocabulary.PER_CHANNEL_METHODS``: compressed-tensors, Quark).

    Bad arguments raise ``InvalidArgument`` when a spec is drawn, not when this is called.

    .. code-block:: pycon

        >>> layer_graphs(max_layers=1, attention=("mha",)).example()
        ModelSpec(layers=(LayerSpec(qkv_quant='none', o_quant='fp8_per_channel', ...),), vocab_size=33,
                  hidden_size=12, num_heads=4, num_kv_heads=4, head_dim=4, ...)
    """
    check_bounds("layers", min_layers, max_layers, floor=1)
    max_layers = max(min_layers, 3) if max_layers is None else max_layers
    attention = check_choices("attention", attention, CHOICES["attention"])
    linear_quants = check_choices("linear_quants", linear_quants, CHOICES["linear_quants"])
    kv_cache_dtypes = check_choices("kv_cache_dtypes", kv_cache_dtypes, CHOICES["kv_cache_dtypes"])
    containers = check_choices("containers", containers, CHOICES["containers"])
    params_dtypes = check_choices("params_dtypes", params_dtypes, CHOICES["params_dtypes"])
    for name, flag in (("allow_unquantized", allow_unquantized), ("allow_tied", allow_tied),
                       ("allow_wrappers", allow_wrappers), ("allow_sinks", allow_sinks),
                       ("allow_per_channel_any_format", allow_per_channel_any_format)):
        check_flag(name, flag)
    quant_methods = check_choices("quant_methods", quant_methods, QUANT_METHODS, allow_empty=allow_unquantized)
    if not isinstance(max_hidden, int) or isinstance(max_hidden, bool) or max_hidden < 1:
        raise InvalidArgument(f"max_hidden={max_hidden!r}, but should be an integer >= 1")
    unquantized_ok = allow_unquantized and "none" in linear_quants
    if not quant_methods and not unquantized_ok:
        raise InvalidArgument(f"quant_methods=() needs allow_unquantized=True and 'none' in linear_quants, "
                              f"but allow_unquantized={allow_unquantized}, linear_quants={linear_quants}")
    if not unquantized_ok and not any(_method_quants(m, linear_quants, allow_per_channel_any_format)
                                      for m in quant_methods):
        raise InvalidArgument(f"linear_quants={linear_quants} with quant_methods={quant_methods} leaves no buildable "
                              f"model: per-channel FP8 exists only in {PER_CHANNEL_METHODS} unless "
                              f"allow_per_channel_any_format=True")
    if not _kv_choices(kv_cache_dtypes, unquantized_ok):
        raise InvalidArgument(f"kv_cache_dtypes={kv_cache_dtypes} leaves no buildable model: fp8_e5m2 needs "
                              f"quant_method=None (allow_unquantized=True and 'none' in linear_quants) [KVPROC-10]")
    return draw(_graphs(min_layers=min_layers, max_layers=max_layers, attention=attention,
                        linear_quants=linear_quants, kv_cache_dtypes=kv_cache_dtypes, quant_methods=quant_methods,
                        unquantized_ok=unquantized_ok, allow_tied=allow_tied, allow_wrappers=allow_wrappers,
                        containers=containers, params_dtypes=params_dtypes, max_hidden=max_hidden,
                        allow_sinks=allow_sinks, allow_per_channel_any_format=allow_per_channel_any_format))


def _method_quants(quant_method: str | None, linear_quants: tuple[str, ...],
                   any_format: bool) -> tuple[str, ...]:
    """The linear schemes drawable under ``quant_method``: none without one; no per-channel FP8 where its
    format cannot state it, unless ``any_format``."""
    if quant_method is None:
        return ("none",)
    if any_format or quant_method in PER_CHANNEL_METHODS:
        return linear_quants
    return tuple(q for q in linear_quants if q != "fp8_per_channel")


def _kv_choices(kv_cache_dtypes: tuple[str, ...], unquantized_ok: bool) -> list[str]:
    """The KV-cache dtypes some drawable quant method builds with (fp8_e5m2 only without one)."""
    return [d for d in kv_cache_dtypes if unquantized_ok or d not in UNQUANTIZED_ONLY_KV_DTYPES]


@st.composite
def _graphs(draw: st.DrawFn, *, min_layers: int, max_layers: int, attention: tuple[str, ...],
            linear_quants: tuple[str, ...], kv_cache_dtypes: tuple[str, ...], quant_methods: tuple[str, ...],
            unquantized_ok: bool, allow_tied: bool, allow_wrappers: bool, containers: tuple[str, ...],
            params_dtypes: tuple[str, ...], max_hidden: int, allow_sinks: bool = False,
            allow_per_channel_any_format: bool = True) -> ModelSpec:
    """Draw one spec from already validated arguments."""
    kv_choices = _kv_choices(kv_cache_dtypes, unquantized_ok)
    kv_cache_dtype = draw(st.sampled_from(kv_choices))
    methods: list[str | None] = [] if kv_cache_dtype in UNQUANTIZED_ONLY_KV_DTYPES else [
        m for m in quant_methods if _method_quants(m, linear_quants, allow_per_channel_any_format)]
    if unquantized_ok:
        methods.append(None)
    quant_method = draw(st.sampled_from(methods))
    quants = st.sampled_from(_method_quants(quant_method, linear_quants, allow_per_channel_any_format))
    layer = st.builds(LayerSpec, qkv_quant=quants, o_quant=quants, gate_up_quant=quants, down_quant=quants,
                      attention_first=st.booleans(), sinks=st.booleans() if allow_sinks else st.just(False))
    num_heads = draw(st.integers(1, min(MAX_HEADS, max_hidden)))
    num_kv_heads = draw(st.sampled_from([d for d in range(num_heads, 0, -1) if num_heads % d == 0]))
    return ModelSpec(
        layers=tuple(draw(st.lists(layer, min_size=min_layers, max_size=max_layers))),
        vocab_size=draw(st.integers(8, 64)),
        hidden_size=num_heads * draw(st.integers(1, max_hidden // num_heads)),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=draw(st.sampled_from(HEAD_DIMS)),
        intermediate_size=draw(st.integers(1, 2 * max_hidden)),
        attention=draw(st.sampled_from(attention)),
        kv_lora_rank=draw(st.integers(1, 8)),
        qk_rope_head_dim=draw(st.sampled_from((2, 4))),
        tie_embeddings=draw(st.booleans()) if allow_tied else False,
        kv_cache_dtype=kv_cache_dtype,
        quant_method=quant_method,
        container=draw(st.sampled_from(containers)),
        wrapper=draw(st.sampled_from(WRAPPERS)) if allow_wrappers else (),
        params_dtype=draw(st.sampled_from(params_dtypes)),
    )
