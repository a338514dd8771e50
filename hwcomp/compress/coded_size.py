"""Size accounting of a compiled artifact's weights (NumPy only, for ``hwcomp inspect``).

Deep Compression's storage estimate: the non-zero weights quantized to ``bits`` (per-tensor
symmetric) and Huffman-coded, plus the positions of the non-zeros as Huffman-coded gaps.
"""

from __future__ import annotations

import numpy as np

from .huffman import huffman_code


def _huffman_bits(values: np.ndarray) -> int:
    if values.size == 0:
        return 0
    symbols, counts = np.unique(values, return_counts=True)
    codes = huffman_code(dict(zip(symbols.tolist(), counts.tolist())))
    return int(sum(len(codes[s]) * int(c) for s, c in zip(symbols.tolist(), counts.tolist())))


def coded_size(arrays: list[np.ndarray], bits: int = 8, min_elements: int = 1024) -> dict:
    """Parameters, non-zeros, bytes as stored, and the quantized + Huffman-coded size in bytes."""
    params = nonzero = stored = coded_bits = 0
    for a in arrays:
        params += a.size
        stored += a.nbytes
        if a.size < min_elements or a.dtype.kind != "f":
            coded_bits += a.nbytes * 8  # small tensors (biases, norms) and integer data stay as they are
            nonzero += int(np.count_nonzero(a))
            continue
        flat = a.ravel()
        idx = np.flatnonzero(flat)
        nonzero += idx.size
        scale = float(np.abs(flat).max()) / (2 ** (bits - 1) - 1) or 1.0
        q = np.clip(np.round(flat[idx] / scale), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1).astype(np.int32)
        gaps = np.diff(np.concatenate([[-1], idx])) if idx.size < flat.size else np.zeros(0, np.int64)
        coded_bits += _huffman_bits(q) + _huffman_bits(gaps) + 32  # + the scale
    return {"parameters": int(params), "nonzero": int(nonzero), "sparsity": 1 - nonzero / max(params, 1),
            "stored_bytes": int(stored), "coded_bits_per_weight": bits,
            "huffman_bytes": int(coded_bits // 8), "compression_ratio": stored / max(coded_bits / 8, 1)}
