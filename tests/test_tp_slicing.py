"""Tensor-parallel slicing of per-head KV-cache scales, on CPU [HEADS-8] (``reference.kv_cache.tp_head_scales``)."""

from __future__ import annotations

import pytest
import torch

from loadspec.reference.kv_cache import tp_head_scales

KV = torch.tensor([0.5, 1.0, 1.5, 2.0]).reshape(4, 1, 1)  # 4 KV heads
Q = torch.tensor([1.0, 3.0, 2.0, 0.5, 4.0, 0.25, 0.75, 8.0]).reshape(8, 1, 1)  # 8 query heads, groups of 2


def _slice(scale, kind="k", *, rank, tp, heads=8, kv_heads=4):
    return tp_head_scales(scale, kind=kind, total_heads=heads, total_kv_heads=kv_heads, tp_rank=rank,
                          tp_size=tp).tolist()


@pytest.mark.parametrize("tp, expected", [(1, [[0.5, 1.0, 1.5, 2.0]]), (2, [[0.5, 1.0], [1.5, 2.0]]),
                                          (4, [[0.5], [1.0], [1.5], [2.0]])])
def test_sharded_ranks_hold_consecutive_kv_heads(tp, expected):
    assert [_slice(KV, rank=r, tp=tp) for r in range(tp)] == expected


def test_replicated_ranks_hold_the_head_they_replicate():
    assert [_slice(KV, rank=r, tp=8) for r in range(8)] == [[0.5], [0.5], [1.0], [1.0], [1.5], [1.5], [2.0], [2.0]]
    one = torch.tensor([0.75]).reshape(1, 1, 1)
    assert [_slice(one, rank=r, tp=4, heads=2, kv_heads=1) for r in range(4)] == [[0.75]] * 4
    two = KV[:2]  # 2 KV heads over 6 ranks: 3 replicas each
    assert [_slice(two, rank=r, tp=6, heads=4, kv_heads=2) for r in range(6)] == [[0.5]] * 3 + [[1.0]] * 3


def test_q_is_reduced_to_kv_heads_before_slicing():
    assert _slice(Q, "q", rank=0, tp=1) == [3.0, 2.0, 4.0, 8.0]
    assert [_slice(Q, "q", rank=r, tp=2) for r in range(2)] == [[3.0, 2.0], [4.0, 8.0]]
    assert [_slice(Q, "q", rank=r, tp=8) for r in (0, 1, 6, 7)] == [[3.0], [3.0], [8.0], [8.0]]


def test_every_shape_of_a_per_head_tensor_slices_alike():
    assert _slice(KV.reshape(4), rank=1, tp=2) == _slice(KV.reshape(4, 1), rank=1, tp=2) == [1.5, 2.0]


def test_result_is_a_new_float32_tensor():
    source = KV.clone()
    out = tp_head_scales(source, kind="v", total_heads=8, total_kv_heads=4, tp_rank=0, tp_size=2)
    out.fill_(9.0)
    assert out.dtype == torch.float32 and source.reshape(-1).tolist() == [0.5, 1.0, 1.5, 2.0]


@pytest.mark.parametrize("kwargs, message", [
    ({"tp_rank": 2, "tp_size": 2}, "tp_rank=2"),
    ({"tp_size": 3}, "does not split evenly"),
    ({"total_kv_heads": 4, "tp_size": 6}, "cannot be replicated evenly"),
    ({"kind": "q"}, "should have 8, one per query head"),
    ({"kind": "prob"}, "kind='prob'"),
    ({"total_heads": 6}, "multiple of num_kv_heads"),
], ids=["rank", "uneven", "uneven-replicas", "q-count", "kind", "heads"])
def test_impossible_slicings_are_rejected(kwargs, message):
    args = {"scale": KV, "kind": "k", "total_heads": 8, "total_kv_heads": 4, "tp_rank": 0, "tp_size": 1, **kwargs}
    scale = args.pop("scale")
    with pytest.raises(ValueError, match=message):
        tp_head_scales(scale, **args)
