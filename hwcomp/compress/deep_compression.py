"""Deep Compression sizing (Han et al. 2016): prune -> share weights (quantize) -> Huffman code.

Each pruned weight is stored as
  * a codebook of ``2^bits`` fp32 centroids (k-means with linear initialization, or uniform levels);
  * the centroid index of every non-zero weight, Huffman coded;
  * the position of every non-zero weight as the gap from the previous one (row-major over the
    ``[out, in]`` matrix), Huffman coded; a gap larger than ``2^index_bits`` is split by filler entries
    (an extra "zero" value symbol), as in the paper's relative indexing;
  * a code table per Huffman code, counted as one byte (the code length) per symbol.
Other parameters (biases, norms) are counted dense at their dtype.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from .huffman import encoded_bits
from .layers import prunable_weights

_FILLER = -1  # value symbol of a filler entry in the relative index stream


def kmeans_quantize(values: Tensor, bits: int, iterations: int = 30) -> tuple[Tensor, Tensor]:
    """1-D k-means with linear initialization over ``[min, max]``; returns (codebook, index per value)."""
    v = values.detach().flatten().double()
    k = min(2**bits, max(1, v.numel()))
    centroids = torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    for _ in range(iterations):
        idx = _nearest(v, centroids)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, v)
        counts = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, torch.ones_like(v))
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.allclose(updated, centroids):
            break
        centroids = updated.sort().values
    return centroids.float(), _nearest(v, centroids)


def uniform_quantize(values: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """``2^bits`` evenly spaced levels over ``[min, max]``; returns (codebook, index per value)."""
    v = values.detach().flatten().double()
    levels = torch.linspace(float(v.min()), float(v.max()), 2**bits, dtype=torch.float64)
    return levels.float(), _nearest(v, levels)


def _nearest(v: Tensor, sorted_centroids: Tensor) -> Tensor:
    mids = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2
    return torch.bucketize(v, mids)


def relative_positions(flat_mask: Tensor, index_bits: int) -> tuple[list[int], int]:
    """Gaps between consecutive non-zeros (first from position -1), split at ``2^index_bits``.

    Returns (gap stream including fillers, number of fillers inserted).
    """
    positions = torch.nonzero(flat_mask.flatten()).flatten().tolist()
    max_gap, prev, gaps, fillers = 2**index_bits, -1, [], 0
    for p in positions:
        gap = p - prev
        while gap > max_gap:
            gaps.append(max_gap)
            gap -= max_gap
            fillers += 1
        gaps.append(gap)
        prev = p
    return gaps, fillers


@dataclass(frozen=True)
class LayerEncoding:
    """Encoded size of one pruned, weight-shared weight (all sizes in bits)."""

    name: str
    numel: int
    nonzero: int
    fillers: int
    value_bits: int
    index_bits: int
    codebook_bits: int
    table_bits: int
    fixed_width_bits: int  # the same streams at fixed width (bits / index_bits), for comparison

    @property
    def total_bits(self) -> int:
        return self.value_bits + self.index_bits + self.codebook_bits + self.table_bits


@dataclass(frozen=True)
class DeepCompressionReport:
    """Sizes in bytes: the dense fp model and its Deep-Compression encoding."""

    dense_bytes: int
    compressed_bytes: int
    other_bytes: int
    layers: list[LayerEncoding] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.dense_bytes / max(1, self.compressed_bytes)


def encode_weight(name: str, w: Tensor, bits: int, index_bits: int,
                  method: Literal["kmeans", "uniform"] = "kmeans") -> LayerEncoding:
    """Size of one weight under prune (its zeros) -> quantize -> Huffman."""
    flat = w.detach().flatten()
    nz = flat != 0
    values = flat[nz]
    if values.numel():
        _, idx = kmeans_quantize(values, bits) if method == "kmeans" else uniform_quantize(values, bits)
    else:
        idx = torch.zeros(0, dtype=torch.long)
    gaps, fillers = relative_positions(nz, index_bits)
    # Fillers carry a value symbol too (where they sit in the stream does not change its Huffman size).
    value_stream = idx.tolist() + [_FILLER] * fillers
    value_bits, index_bits_used = encoded_bits(value_stream), encoded_bits(gaps)
    table = 8 * (len(set(value_stream)) + len(set(gaps)))
    codebook = 32 * (2**bits)
    fixed = len(value_stream) * bits + len(gaps) * index_bits
    return LayerEncoding(name, flat.numel(), int(nz.sum()), fillers, value_bits, index_bits_used, codebook, table,
                         fixed)


def deep_compression_size(model: nn.Module, bits: int = 5, index_bits: int = 4,
                          method: Literal["kmeans", "uniform"] = "kmeans",
                          names: Sequence[str] | None = None) -> DeepCompressionReport:
    """Encoded size of ``model``: the named weights (default: all Linear/Conv) Deep-Compression coded."""
    names = list(names) if names is not None else prunable_weights(model)
    layers = [encode_weight(n, model.get_parameter(n), bits, index_bits, method) for n in names]
    coded = set(names)
    other = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n not in coded)
    dense = sum(p.numel() * p.element_size() for p in model.parameters())
    compressed = other + sum((enc.total_bits + 7) // 8 for enc in layers)
    return DeepCompressionReport(dense, compressed, other, layers)


@torch.no_grad()
def share_weights(model: nn.Module, bits: int, method: Literal["kmeans", "uniform"] = "kmeans",
                  names: Sequence[str] | None = None) -> None:
    """Replace every non-zero weight by its centroid in place (zeros stay zero), to measure accuracy."""
    for n in (list(names) if names is not None else prunable_weights(model)):
        w = model.get_parameter(n)
        nz = w != 0
        if not nz.any():
            continue
        book, idx = kmeans_quantize(w[nz], bits) if method == "kmeans" else uniform_quantize(w[nz], bits)
        w[nz] = book[idx].to(w.dtype)
