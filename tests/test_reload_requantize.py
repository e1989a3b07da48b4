"""LOAD-17, LOAD-20, reference internals: the in-place, row-chunked FP8 re-quantization (issue 12) writes the
same bytes as the straightforward formula ``quantize_fp8(w.float() * s, m)`` it replaced (commit c964e4d's
``Fp8LinearMethod.process_weights_after_loading``), on every finite e4m3 value: zeros of both signs, the
largest value, subnormals, and chunk sizes that do not divide the rows.
"""

from __future__ import annotations

import pytest
import torch

from loadspec.conformance.assertions import assert_equal
from loadspec.reference.layers.linear import Linear, quantize_fp8, requantize_rows_
from loadspec.reference.vocabulary import FP8_DTYPE, FP8_MAX

NAN_BYTES = (0x7F, 0xFF)  # the only NaN encodings of float8_e4m3fn; it has no infinity


def every_finite_fp8() -> torch.Tensor:
    """The 254 finite e4m3fn values (both zeros, the subnormals, +-448), as one row."""
    codes = torch.tensor([b for b in range(256) if b not in NAN_BYTES], dtype=torch.uint8)
    return codes.view(FP8_DTYPE)


def random_fp8(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Uniformly random finite e4m3fn bytes, with the edge values planted in the first rows."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (rows, cols), generator=generator, dtype=torch.uint8)
    codes[codes == NAN_BYTES[0]] = 0x00  # +0
    codes[codes == NAN_BYTES[1]] = 0x80  # -0
    edges = every_finite_fp8().view(torch.uint8)
    flat = codes.reshape(-1)
    flat[: min(flat.numel(), edges.numel())] = edges[: flat.numel()]
    return codes.view(FP8_DTYPE)


def straightforward(weight: torch.Tensor, scale: torch.Tensor, new_scale: torch.Tensor) -> torch.Tensor:
    return quantize_fp8(weight.float() * scale, new_scale)


SCALES = [(1.0, 1.0), (0.5, 1.0), (1e-3, 7e-3), (3.0, 3.0), (0.0117, 0.5), (2.0, 0.25),  # last: saturates
          (1e-30, 1e-30), (2.0 ** -9, 1.0)]  # the second-last and the last reach the subnormals


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale,new_scale", SCALES)
@pytest.mark.parametrize("rows,cols,chunk", [(37, 29, 29 * 4), (37, 29, 100), (8, 254, 1), (64, 16, 1 << 22),
                                             (5, 1, 2)])
def test_chunked_requantization_equals_the_formula(seed, scale, new_scale, rows, cols, chunk):
    weight = random_fp8(rows, cols, seed)
    s, m = torch.tensor(scale), torch.tensor(new_scale)
    expected = straightforward(weight, s, m)
    got = weight.clone()
    requantize_rows_(got, s, m, chunk_elements=chunk)
    assert_equal("re-quantized bytes (uint8)", got.view(torch.uint8).tolist(),
                 expected.view(torch.uint8).tolist(), rule="LOAD-20")


def test_every_value_and_the_clamp():
    """Each finite e4m3 value at ratios that keep, shrink into the subnormals and saturate at +-448."""
    row = every_finite_fp8().reshape(1, -1)
    for scale, new_scale in [(1.0, 1.0), (1.0, 64.0), (1.0, 2.0 ** 12), (4.0, 1.0)]:
        s, m = torch.tensor(scale), torch.tensor(new_scale)
        got = row.clone()
        requantize_rows_(got, s, m, chunk_elements=7)
        expected = straightforward(row, s, m)
        assert_equal(f"bytes at {scale}/{new_scale}", got.view(torch.uint8).tolist(),
                     expected.view(torch.uint8).tolist(), rule="LOAD-20")
    saturated = row.clone()
    requantize_rows_(saturated, torch.tensor(4.0), torch.tensor(1.0))
    assert_equal("largest |value| after saturation", float(saturated.float().abs().max()), FP8_MAX, rule="LOAD-20")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_linear_processing_equals_the_formula(seed, monkeypatch):
    """``Fp8LinearMethod``'s per-tensor processing of a fused layer, with chunks of a few rows, against each shard
    dequantized and re-quantized to the largest scale by the formula."""
    monkeypatch.setattr("loadspec.reference.layers.linear.REQUANTIZE_CHUNK_ELEMENTS", 3 * 24)
    layer = Linear(24, {"q": 9, "k": 5, "v": 7}, scheme="fp8_per_tensor")
    weight = random_fp8(21, 24, seed)
    scales = torch.tensor([0.02, 0.5, 0.125]) * (seed + 1)
    layer.weight.data.copy_(weight)
    layer.weight_scale.data.copy_(scales)
    layer.quant_method.process_weights_after_loading(layer)
    maximum = scales.max()
    expected = torch.cat([straightforward(weight[offset:offset + size], scales[i], maximum)
                          for i, (offset, size) in enumerate([(0, 9), (9, 5), (14, 7)])])
    assert_equal("processed weight bytes", layer.weight.view(torch.uint8).tolist(),
                 expected.view(torch.uint8).tolist(), rule="LOAD-20")
    assert_equal("processed weight_scale", float(layer.weight_scale), float(maximum), rule="LOAD-17")


def test_the_default_chunk_follows_the_device(device, monkeypatch):
    """With no ``chunk_elements``, a CPU tensor is worked through in ``REQUANTIZE_CHUNK_ELEMENTS`` and a CUDA one in
    ``REQUANTIZE_CHUNK_ELEMENTS_CUDA`` elements at a time (counted through the float32 temporaries it makes); the
    bytes are the formula's either way."""
    monkeypatch.setattr("loadspec.reference.layers.linear.REQUANTIZE_CHUNK_ELEMENTS", 2 * 24)
    monkeypatch.setattr("loadspec.reference.layers.linear.REQUANTIZE_CHUNK_ELEMENTS_CUDA", 5 * 24)
    weight = random_fp8(20, 24, 3).to(device)
    s, m = torch.tensor(0.25, device=device), torch.tensor(0.5, device=device)
    chunks = []
    real_float = torch.Tensor.float
    monkeypatch.setattr(torch.Tensor, "float", lambda self: chunks.append(self.shape[0]) or real_float(self))
    got = weight.clone()
    requantize_rows_(got, s, m)
    monkeypatch.undo()
    assert_equal(f"rows per chunk on {device}", chunks, [5] * 4 if device == "cuda" else [2] * 10, rule="LOAD-20")
    assert_equal("bytes", got.cpu().view(torch.uint8).tolist(),
                 straightforward(weight, s, m).cpu().view(torch.uint8).tolist(), rule="LOAD-20")
