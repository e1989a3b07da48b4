"""The reference loader: the contract's executable definition, strict where vLLM is lenient.

Public entry points (``api``): ``build`` a model from a ``ModelSpec``, ``first_load`` a
checkpoint, ``dummy_load``, ``reload`` layer by layer or through a ``reload_session``,
``export`` the processed kernel state in canonical names. Every rejection is a
``LoadspecError`` (a ``ValueError``) naming the weight and the reason [LOAD-6].
The vocabulary every other package uses is ``loadspec.reference.vocabulary``.
"""

from loadspec.reference.api import Weights, build, dummy_load, export, first_load, reload, reload_session, weights_of
from loadspec.reference.errors import (
    LoadspecError,
    MapperError,
    MissingWeightsError,
    PartialLayerError,
    ScaleShapeError,
    ScaleValueError,
    ShapeMismatchError,
    UnknownWeightError,
    UnsupportedSchemeError,
)
from loadspec.reference.reload import ReloadReport, ReloadSession
from loadspec.reference.spec import DEFAULT_SPEC, LayerSpec, ModelSpec, uniform_layers

__all__ = ["build", "first_load", "dummy_load", "reload", "reload_session", "export", "weights_of", "Weights",
           "ReloadReport", "ReloadSession", "ModelSpec", "LayerSpec", "DEFAULT_SPEC", "uniform_layers",
           "LoadspecError", "ScaleShapeError", "ScaleValueError", "ShapeMismatchError", "UnknownWeightError",
           "MissingWeightsError", "PartialLayerError", "MapperError", "UnsupportedSchemeError"]
