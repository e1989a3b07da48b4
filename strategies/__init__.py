"""Reusable Hypothesis strategies for loadspec: model graphs, KV-cache scales, checkpoint layouts, mappers.

Adapters and their tests draw small models with ``layer_graphs()``, checkpoints of
them with ``checkpoint_layouts(spec)`` (in memory or written to disk), scale
tensors and values with the ``scale_*`` strategies, and weight names and
``WeightsMapper``s with ``weight_names()`` and ``mappers()``. Every strategy
checks its arguments and raises ``hypothesis.errors.InvalidArgument``.
"""

from loadspec.strategies.graphs import layer_graphs
from loadspec.strategies.layouts import CheckpointLayout, checkpoint_layouts
from loadspec.strategies.mappers import mappers, weight_names
from loadspec.strategies.scales import kv_scale_sets, scale_dtypes, scale_shapes, scale_tensors, scale_values

__all__ = [
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
