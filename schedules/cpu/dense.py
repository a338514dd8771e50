"""Dense products with a constant weight pre-packed in column panels, for LLVM CPU targets.

``W [K, N]`` is stored as ``[N/x, K, x]``: the ``x`` columns a register tile accumulates (two
vectors) are contiguous for every ``k``, so the tile streams one panel front to back instead of
touching a new cache line ``N * 4`` bytes away at each step (and a new page every few steps). The
packing is done once at compile time (``hwcomp.passes.pack_dense``); :class:`~.rules.TiledReduction`
schedules the product like any other (its column tile is the panel width). Measured on Zen 3, 2
threads, default knobs: 64x1024x4096 13.9 -> 3.6 ms, 128x768x3072 9.9 -> 4.5 ms.
"""

from __future__ import annotations

import numpy as np
from tvm import te


def pack_dense_weight(w: np.ndarray, panel: int) -> np.ndarray:
    """``W [K, N]`` → ``[ceil(N/panel), K, panel]``, the last panel's columns past N zero."""
    k, n = w.shape
    panels = -(-n // panel)
    if panels * panel != n:
        w = np.concatenate([w, np.zeros((k, panels * panel - n), w.dtype)], axis=1)
    return np.ascontiguousarray(w.reshape(k, panels, panel).transpose(1, 0, 2))


def dense_packed(x: te.Tensor, wp: te.Tensor, n: int | None = None) -> te.Tensor:
    """``x [..., K]`` @ ``W`` with ``W`` packed as ``wp [ceil(N/x), K, x]`` → ``[..., N]`` (``n``: N,
    when the last panel is zero-padded; default all the panels' columns).

    The product is computed as ``[..., N/x, x]`` (plain indices: an einsum, so ``TiledReduction``
    can pad a symbolic row count with ``pad_einsum``; with ``n // x`` in the weight's index it could
    not, and a dynamic sequence length ran 2.6x slower than static) and unpacked to ``[..., N]`` in
    the same function, where the schedule folds it into the tile's store."""
    panels, k_w, panel = (int(d) for d in wp.shape)
    k_x = x.shape[-1]
    if int(k_x) != k_w:
        raise ValueError(f"dense_packed: x has K={k_x}, the weight K={k_w}")
    k = te.reduce_axis((0, k_w), "k")
    lead = list(x.shape[:-1])
    prod = te.compute(
        (*lead, panels, panel),
        lambda *idx: te.sum(x[(*idx[:-2], k)] * wp[idx[-2], k, idx[-1]], axis=k),
        name="dense_packed")
    n = panels * panel if n is None else n
    if not (panels - 1) * panel < n <= panels * panel:
        raise ValueError(f"dense_packed: {n} columns do not fill {panels} panels of {panel}")
    return te.compute((*lead, n), lambda *idx: prod[(*idx[:-1], idx[-1] // panel, idx[-1] % panel)],
                      name="dense_unpack")
