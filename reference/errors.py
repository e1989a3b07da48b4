"""Errors raised by the reference loader: every rejection is a ``ValueError`` subclass.

Each message names the weight (or layer) and the reason, and every raising code
path leaves the model exactly as it was before the call (rule LOAD-6).
"""

from __future__ import annotations


class LoadspecError(ValueError):
    """Base class of every rejection raised by ``loadspec.reference``."""


class ScaleShapeError(LoadspecError):
    """A KV-cache scale tensor does not have exactly one element [SCALE-4]."""


class ScaleValueError(LoadspecError):
    """A loaded KV-cache scale is NaN, infinite, zero or negative [KVPROC-7]."""


class ShapeMismatchError(LoadspecError):
    """A checkpoint tensor's shape does not fit its parameter [LOAD-2]."""


class UnknownWeightError(LoadspecError):
    """A checkpoint name maps to no parameter of the model [LOAD-4]."""


class MissingWeightsError(LoadspecError):
    """A first load left parameters without a checkpoint value [LOAD-7]."""


class PartialLayerError(LoadspecError):
    """A reload delivered some but not all elements of a layer [RELOAD-6]."""


class MapperError(LoadspecError):
    """A ``WeightsMapper`` was built with an entry that cannot work [MAP-9]."""


class DtypeMismatchError(LoadspecError):
    """A checkpoint tensor's dtype is not one its parameter's loader accepts [LOAD-11]."""


class LinearScaleValueError(LoadspecError):
    """A linear ``weight_scale`` or ``input_scale`` is NaN, infinite, not positive or absurdly large [LOAD-12]."""


class DuplicateSourceError(LoadspecError):
    """Two checkpoint tensors give a value for the same parameter (or the same shard of it) [LOAD-14]."""


class NotLoadableError(LoadspecError):
    """A checkpoint name addresses a tensor that processing owns (an attention output scale) [LOAD-15]."""


class UnsupportedSchemeError(LoadspecError):
    """A quantization or KV-cache scheme the reference does not implement."""


class CheckpointFormatError(LoadspecError):
    """A checkpoint directory, index, shard header or ``config.json`` is malformed, lies or points outside."""
