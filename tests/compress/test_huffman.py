"""Huffman coding against the entropy bound; Deep Compression sizing."""
from __future__ import annotations

import random

import pytest
import torch

from hwcomp.compress.deep_compression import (deep_compression_size, kmeans_quantize, relative_positions,
                                              share_weights)
from hwcomp.compress.huffman import encoded_bits, entropy_bits, huffman_code, huffman_decode, huffman_encode


def sample(n: int, seed: int = 0) -> list[int]:
    probs = [0.4, 0.2, 0.15, 0.1, 0.08, 0.04, 0.02, 0.01]
    return random.Random(seed).choices(range(len(probs)), weights=probs, k=n)


def test_huffman_size_near_entropy_bound():
    symbols = sample(50_000)
    bound = entropy_bits(symbols)
    bits = encoded_bits(symbols)
    assert bound <= bits <= 1.03 * bound, (bits, bound)
    assert bits < 0.85 * 3 * len(symbols)  # clearly beats the 3-bit fixed-width code


def test_dyadic_distribution_meets_bound_exactly_and_roundtrips():
    symbols = ["a"] * 8 + ["b"] * 4 + ["c"] * 2 + ["d"] * 2
    codes = huffman_code({"a": 8, "b": 4, "c": 2, "d": 2})
    assert sorted(len(c) for c in codes.values()) == [1, 2, 3, 3]
    assert encoded_bits(symbols) == entropy_bits(symbols) == 28
    data, codes, nbits = huffman_encode(sample(2000, seed=1))
    assert huffman_decode(data, codes, nbits) == sample(2000, seed=1)
    assert huffman_code({"x": 5}) == {"x": "0"}


def test_relative_positions_insert_fillers():
    mask = torch.zeros(40, dtype=torch.bool)
    mask[[0, 3, 39]] = True
    gaps, fillers = relative_positions(mask, index_bits=3)  # max gap 8
    assert gaps == [1, 3, 8, 8, 8, 8, 4] and fillers == 4
    assert sum(gaps) - 1 == 39


def test_kmeans_quantize_finds_clusters():
    v = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.5), torch.full((20,), 2.0)]) + 0.01 * torch.randn(100)
    book, idx = kmeans_quantize(v, 2)
    assert torch.allclose(book[idx], v, atol=0.05)


def test_deep_compression_shrinks_a_pruned_model():
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    with torch.no_grad():
        w = model[0].weight
        w[w.abs() < w.abs().flatten().kthvalue(int(0.9 * w.numel())).values] = 0
    report = deep_compression_size(model, bits=5, index_bits=4, names=["0.weight"])
    layer = report.layers[0]
    assert layer.nonzero == pytest.approx(0.1 * 256 * 256, abs=2)
    assert layer.total_bits <= layer.fixed_width_bits + layer.codebook_bits + layer.table_bits
    assert report.ratio > 15  # fp32 dense -> ~10% non-zeros at < 9 bits each (+ dense second layer)
    share_weights(model, 5, names=["0.weight"])
    assert model[0].weight.unique().numel() <= 33  # 32 centroids + the zero


def test_coded_size_of_pruned_weights():
    """hwcomp inspect's size accounting: zeros cost only their gaps; dense 8-bit ≈ entropy of codes."""
    import numpy as np

    from hwcomp.compress.coded_size import coded_size

    rng = np.random.default_rng(0)
    dense = rng.standard_normal((256, 256)).astype("float32")
    sparse = dense * (rng.random((256, 256)) < 0.1)
    d, s = coded_size([dense]), coded_size([sparse])
    assert d["parameters"] == s["parameters"] == 65536 and d["sparsity"] == 0
    assert abs(s["sparsity"] - 0.9) < 0.01
    assert d["huffman_bytes"] < d["stored_bytes"] / 4 + 1024  # ≤ 8 bits per weight + overhead
    assert s["huffman_bytes"] < d["huffman_bytes"] / 4  # 10 % non-zeros: values and gaps only
