"""Reusable Hypothesis strategies for loadspec: model graphs, KV-cache scales, checkpoint layouts, mappers.

An engine's own tests bind its adapter once, ``ls = make_strategies_namespace(adapter)``,
and draw small models with ``ls.layer_graphs()`` (only what the adapter's capabilities
declare), checkpoints of them with ``ls.checkpoint_layouts(spec)`` (in memory or written
to disk), and KV-cache scales with ``ls.kv_scale_sets()`` / ``ls.scale_values()``. The
same strategies, unbound, are importable from here. Every strategy checks its arguments
when drawn and raises ``hypothesis.errors.InvalidArgument``; its ``repr`` is the call.
"""

from loadspec.strategies.graphs import layer_graphs
from loadspec.strategies.layouts import CheckpointLayout, checkpoint_layouts
from loadspec.strategies.mappers import mappers, weight_names
from loadspec.strategies.namespace import StrategiesNamespace, make_strategies_namespace
from loadspec.strategies.scales import kv_scale_sets, scale_dtypes, scale_shapes, scale_tensors, scale_values

__all__ = [
    "make_strategies_namespace",
    "StrategiesNamespace",
    "layer_graphs",
    "scale_shapes",
    "scale_dtypes",
    "scale_values",
    "scale_tensors",
    "kv_scale_sets",
    "checkpoint_layouts",
    "CheckpointLayout",
    "weight_names",
    "mappers",
]
