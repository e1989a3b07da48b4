"""``make_strategies_namespace(adapter)``: the public strategies bound to one engine's adapter.

Modelled on ``hypothesis.extra.array_api.make_strategies_namespace(xp)``: the adapter is
bound once, and the namespace's strategies draw only what its ``capabilities`` declare,
so an engine's own tests never draw a model it cannot build. The adapter is duck-typed:
only ``adapter.name`` and ``adapter.capabilities`` are read.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any
from weakref import WeakValueDictionary

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from loadspec.reference.spec import ModelSpec
from loadspec.reference.vocabulary import QUANT_METHODS
from loadspec.strategies import graphs, layouts
from loadspec.strategies._validation import check_choices, check_flag
from loadspec.strategies.capabilities import (
    ATTENTION_SINKS,
    GRAPH_CHOICES,
    GRAPH_FLAGS,
    MODEL,
    PRIMITIVES,
    spec_capabilities,
)
from loadspec.strategies.layouts import ORDERS, CheckpointLayout
from loadspec.strategies.mappers import mappers, weight_names
from loadspec.strategies.scales import kv_scale_sets, scale_dtypes, scale_shapes, scale_tensors, scale_values

__all__ = ["make_strategies_namespace", "StrategiesNamespace", "TIERS"]

UNTIERED = {"scale_values": scale_values, "kv_scale_sets": kv_scale_sets}
"""Strategies every namespace has: KV-cache scale values feed both tiers."""

PRIMITIVE_STRATEGIES = {"scale_shapes": scale_shapes, "scale_dtypes": scale_dtypes, "scale_tensors": scale_tensors,
                        "weight_names": weight_names, "mappers": mappers}
"""Strategies of the primitives tier's inputs, unchanged by other capabilities."""

TIERS: dict[str, tuple[str, ...]] = {MODEL: ("layer_graphs", "checkpoint_layouts"),
                                     PRIMITIVES: tuple(PRIMITIVE_STRATEGIES)}
"""Capability -> the strategies a namespace has only when the adapter declares it (the two tiers)."""

_NAMESPACES: WeakValueDictionary[tuple[str, frozenset[str]], StrategiesNamespace] = WeakValueDictionary()


class StrategiesNamespace(SimpleNamespace):
    """What ``make_strategies_namespace`` returns: ``name``, ``capabilities`` and the strategies they allow."""

    def __repr__(self) -> str:
        return f"make_strategies_namespace({self.__dict__.get('name')})"

    def __getattr__(self, attribute: str) -> Any:  # only called for attributes the namespace lacks
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        for capability, names in TIERS.items():
            if attribute in names:
                raise AttributeError(f"{self!r} has no {attribute!r}: it needs the {capability!r} capability, which "
                                     f"adapter {self.__dict__.get('name')!r} does not declare "
                                     f"(it declares {sorted(self.__dict__.get('capabilities', ()))})")
        available = sorted(k for k in self.__dict__ if k not in ("name", "capabilities"))
        raise AttributeError(f"{self!r} has no attribute {attribute!r}; its strategies are {', '.join(available)} "
                             f"(and it has name and capabilities)")


def make_strategies_namespace(adapter: Any) -> StrategiesNamespace:
    """Creates a strategies namespace for ``adapter``: the public strategies, limited to what it declares.

    * ``adapter`` is the engine's loadspec adapter, or any object with a ``name`` (a string) and
      ``capabilities`` (capability names, see ``loadspec.strategies.capabilities``); nothing else is read.

    ``layer_graphs`` and ``checkpoint_layouts`` need the ``"model"`` capability, ``scale_shapes``,
    ``scale_dtypes``, ``scale_tensors``, ``weight_names`` and ``mappers`` the ``"primitives"`` one,
    and ``scale_values`` and ``kv_scale_sets`` are always there; asking for a missing one raises
    an ``AttributeError`` that says why. One namespace is made per name and capability set.

    .. code-block:: pycon

        >>> ls = make_strategies_namespace(ReferenceAdapter())
        >>> ls
        make_strategies_namespace(reference)
        >>> ls.checkpoint_layouts(DEFAULT_SPEC, producers=("modelopt",))
        checkpoint_layouts(ModelSpec(layers=(...), ...), producers=('modelopt',))
    """
    name = getattr(adapter, "name", None)
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"adapter={adapter!r} has name={name!r}, but an adapter's name should be a "
                              f"non-empty string")
    declared = getattr(adapter, "capabilities", None)
    if isinstance(declared, (str, bytes)) or not isinstance(declared, Iterable):
        raise InvalidArgument(f"adapter {name!r} has capabilities={declared!r}, but they should be a set of "
                              f"capability names, e.g. frozenset({{'model', 'primitives'}})")
    capabilities = frozenset(declared)
    if not all(isinstance(c, str) for c in capabilities):
        raise InvalidArgument(f"adapter {name!r} has capabilities={declared!r}, but every one should be a string")
    key = (name, capabilities)
    namespace = _NAMESPACES.get(key)
    if namespace is None:
        namespace = StrategiesNamespace(name=name, capabilities=capabilities, **_strategies(name, capabilities))
        _NAMESPACES[key] = namespace
    return namespace


def _strategies(name: str, capabilities: frozenset[str]) -> dict[str, Any]:
    """The strategies of ``make_strategies_namespace`` for an adapter called ``name`` declaring ``capabilities``."""
    label = f"make_strategies_namespace({name})"

    def choices(argument: str, value: Iterable[str] | None, default: Iterable[str]) -> tuple[str, ...]:
        """``value`` (``None``: the ``default`` choices the capabilities allow), checked against the capabilities."""
        needs = GRAPH_CHOICES[argument]
        if value is None:
            return tuple(c for c in default if c not in needs or needs[c] in capabilities)
        chosen = check_choices(argument, value, graphs.CHOICES[argument])
        lacking = {c: needs[c] for c in chosen if c in needs and needs[c] not in capabilities}
        if lacking:
            raise InvalidArgument(f"{argument} contains {list(lacking)}, but {label} cannot draw them: the adapter "
                                  f"does not declare {sorted(set(lacking.values()))}")
        return chosen

    def flag(argument: str, value: bool | None) -> bool:
        """``value`` (``None``: whether the capability is declared), checked against the capabilities."""
        capability = GRAPH_FLAGS[argument]
        if value is None:
            return capability in capabilities
        check_flag(argument, value)
        if value and capability not in capabilities:
            raise InvalidArgument(f"{argument}=True, but {label} cannot draw it: the adapter does not declare "
                                  f"{capability!r}")
        return value

    def sinks_flag(value: bool) -> bool:
        """``allow_sinks``: opt-in (default ``False``), and only with ``attention_sinks`` declared [RELOAD-15]."""
        check_flag("allow_sinks", value)
        if value and ATTENTION_SINKS not in capabilities:
            raise InvalidArgument(f"allow_sinks=True, but {label} cannot draw it: the adapter does not declare "
                                  f"{ATTENTION_SINKS!r}")
        return value

    @st.composite
    def layer_graphs(draw: st.DrawFn, *, min_layers: int = 1, max_layers: int | None = 3,
                     attention: Iterable[str] | None = None, linear_quants: Iterable[str] | None = None,
                     kv_cache_dtypes: Iterable[str] | None = None, quant_methods: Iterable[str] = QUANT_METHODS,
                     allow_unquantized: bool = True, allow_tied: bool | None = None,
                     allow_wrappers: bool | None = None, containers: Iterable[str] | None = None,
                     params_dtypes: Iterable[str] | None = None, max_hidden: int = 32,
                     allow_sinks: bool = False, allow_per_channel_any_format: bool | None = None) -> ModelSpec:
        """Draws ``ModelSpec``s the adapter can build: ``loadspec.strategies.layer_graphs`` within its capabilities.

        Arguments as there. Those that default to ``None`` draw every choice the adapter's capabilities
        allow (``capabilities.GRAPH_CHOICES``/``GRAPH_FLAGS``: no ``"mla"`` without the ``mla``
        capability, no tied embeddings without ``tied_embeddings``, per-channel FP8 under ``fp8``/``modelopt``
        only with ``fp8_per_channel_any_format``, ...); naming a choice it does not
        declare raises ``InvalidArgument`` when drawn. ``allow_sinks`` (default ``False``) needs ``attention_sinks``.
        """
        gated = {"attention": attention, "linear_quants": linear_quants, "kv_cache_dtypes": kv_cache_dtypes,
                 "containers": containers, "params_dtypes": params_dtypes}
        defaults = {**graphs.CHOICES, "kv_cache_dtypes": graphs.DEFAULT_KV_CACHE_DTYPES}
        options: dict[str, Any] = {arg: choices(arg, value, defaults[arg]) for arg, value in gated.items()}
        options.update(allow_tied=flag("allow_tied", allow_tied), allow_wrappers=flag("allow_wrappers", allow_wrappers),
                       allow_sinks=sinks_flag(allow_sinks),
                       allow_per_channel_any_format=flag("allow_per_channel_any_format", allow_per_channel_any_format))
        return draw(graphs.layer_graphs(min_layers=min_layers, max_layers=max_layers, quant_methods=quant_methods,
                                        allow_unquantized=allow_unquantized, max_hidden=max_hidden, **options))

    @st.composite
    def checkpoint_layouts(draw: st.DrawFn, graph: ModelSpec, *, producers: Iterable[str] | None = None,
                           orders: Iterable[str] = ORDERS, allow_sharding: bool = True, allow_missing: bool = False,
                           allow_extra: bool = False, kv_scales: st.SearchStrategy[Any] | None = None
                           ) -> CheckpointLayout:
        """Draws ``CheckpointLayout``s of ``graph``: ``loadspec.strategies.checkpoint_layouts`` (arguments as there).

        ``graph`` must be a model the adapter can build (as ``layer_graphs()`` draws); one that
        needs a capability the adapter does not declare raises ``InvalidArgument`` when drawn.
        """
        if isinstance(graph, ModelSpec):
            lacking = sorted(spec_capabilities(graph) - capabilities)
            if lacking:
                raise InvalidArgument(f"graph needs the capabilities {lacking}, but the adapter of {label} does not "
                                      f"declare them; draw graphs from {label}.layer_graphs()")
        return draw(layouts.checkpoint_layouts(graph, producers=producers, orders=orders,
                                               allow_sharding=allow_sharding, allow_missing=allow_missing,
                                               allow_extra=allow_extra, kv_scales=kv_scales))

    bound: dict[str, Any] = dict(UNTIERED)
    if MODEL in capabilities:
        bound.update(layer_graphs=layer_graphs, checkpoint_layouts=checkpoint_layouts)
    if PRIMITIVES in capabilities:
        bound.update(PRIMITIVE_STRATEGIES)
    return bound
