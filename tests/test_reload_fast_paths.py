"""KVPROC-11, LOAD-1, LOAD-2, reference internals: the per-tensor shortcuts of issue 12 give what the code they
replaced gave. ``as_float32`` against ``float(torch.tensor(v, dtype=torch.float32))`` (the float mirrors of the
KV-cache scales); ``ShardLoader.weight_check``'s shard shape, computed without a view, against the view's shape
and errors.
"""

from __future__ import annotations

import math
import random
import struct

import pytest
import torch

from loadspec.conformance.assertions import assert_equal
from loadspec.reference.errors import ShapeMismatchError
from loadspec.reference.kv_cache import as_float32
from loadspec.reference.layers.linear import ShardLoader

EDGES = [0.0, -0.0, 1.0, 0.1, 1 / 3, 2.0 ** -149, 2.0 ** -150, 2.0 ** -150 * 1.0000001, 5e-324, 1e-46,
         3.4028234663852886e38, 3.4028235677973366e38, 3.4028236e38, 1e39, -1e39, math.inf, -math.inf]


def _bits(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


def test_as_float32_equals_the_torch_cast():
    rng = random.Random(0)
    values = EDGES + [rng.uniform(-1, 1) * 10 ** rng.uniform(-50, 40) for _ in range(20000)]
    values += [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0] for _ in range(20000)]
    wrong = [v for v in values if not math.isnan(v)
             and _bits(as_float32(v)) != _bits(float(torch.tensor(v, dtype=torch.float32)))]
    assert_equal("values rounded unlike torch's float32 cast", wrong[:5], [], rule="KVPROC-11")


SHARDS = {"q": (0, 4), "k": (4, 2), "v": (6, 2), "wide": (6, 5), "negative": (-2, 2)}


@pytest.mark.parametrize("shard_id", [None, "q", "k", "v", "wide", "negative", "missing"])
@pytest.mark.parametrize("shape", [(8, 3), (8,), ()])
def test_shard_shape_equals_the_view(shard_id, shape):
    loader = ShardLoader(SHARDS)
    param = torch.empty(shape)
    try:
        expected: object = tuple(loader._target(param, shard_id).shape)
    except (ShapeMismatchError, IndexError, RuntimeError) as exc:
        expected = type(exc)
    try:
        got: object = tuple(loader._target_shape(param, shard_id))
    except (ShapeMismatchError, IndexError, RuntimeError) as exc:
        got = type(exc)
    assert_equal(f"shard {shard_id!r} of a {shape} parameter", got, expected, rule="LOAD-2")
