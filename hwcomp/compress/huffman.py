"""Huffman coding (heapq-based), used to size Deep-Compression-style weight encodings."""
from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import count


def huffman_code(frequencies: Mapping[Hashable, int]) -> dict[Hashable, str]:
    """Optimal prefix code ``{symbol: bit string}`` for the given symbol counts.

    A single symbol gets the one-bit code ``"0"`` so that its occurrences still cost one bit each.
    """
    symbols = [(f, s) for s, f in frequencies.items() if f > 0]
    if not symbols:
        return {}
    if len(symbols) == 1:
        return {symbols[0][1]: "0"}
    tie = count()  # unique tie-breaker: heap never compares the (unorderable) tree nodes
    heap: list[tuple[int, int, object]] = [(f, next(tie), ("leaf", s)) for f, s in symbols]
    heapq.heapify(heap)
    while len(heap) > 1:
        f1, _, a = heapq.heappop(heap)
        f2, _, b = heapq.heappop(heap)
        heapq.heappush(heap, (f1 + f2, next(tie), (a, b)))
    codes: dict[Hashable, str] = {}
    stack: list[tuple[object, str]] = [(heap[0][2], "")]
    while stack:
        node, prefix = stack.pop()
        if node[0] == "leaf":  # type: ignore[index]
            codes[node[1]] = prefix  # type: ignore[index]
        else:
            left, right = node  # type: ignore[misc]
            stack.append((left, prefix + "0"))
            stack.append((right, prefix + "1"))
    return codes


def encoded_bits(symbols: Iterable[Hashable]) -> int:
    """Length in bits of the Huffman encoding of ``symbols`` (code table not included)."""
    freq = Counter(symbols)
    codes = huffman_code(freq)
    return sum(f * len(codes[s]) for s, f in freq.items())


def entropy_bits(symbols: Iterable[Hashable]) -> float:
    """``n * H``: the empirical entropy bound, in bits, for coding ``symbols`` one at a time."""
    freq = Counter(symbols)
    n = sum(freq.values())
    return -sum(f * math.log2(f / n) for f in freq.values()) if n else 0.0


def huffman_encode(symbols: Sequence[Hashable]) -> tuple[bytes, dict[Hashable, str], int]:
    """Encode ``symbols``; returns (packed bytes, code table, number of valid bits)."""
    codes = huffman_code(Counter(symbols))
    bits = "".join(codes[s] for s in symbols)
    nbits = len(bits)
    packed = int(bits + "0" * (-nbits % 8), 2).to_bytes((nbits + 7) // 8, "big") if nbits else b""
    return packed, codes, nbits


def huffman_decode(data: bytes, codes: Mapping[Hashable, str], nbits: int) -> list[Hashable]:
    """Inverse of :func:`huffman_encode`."""
    inverse = {c: s for s, c in codes.items()}
    bits = bin(int.from_bytes(data, "big"))[2:].zfill(len(data) * 8)[:nbits] if data else ""
    out, current = [], ""
    for b in bits:
        current += b
        if current in inverse:
            out.append(inverse[current])
            current = ""
    if current:
        raise ValueError("trailing bits do not form a code word")
    return out
