"""What one BSR kernel computes, whatever the target: ``y[m, n] = act(x[m, k] @ W.T (+ bias))`` with
``W[n, k]`` stored in ``block = (r, c)`` tiles (packed as in :mod:`hwcomp.sparse_format.bsr`).

The per-target generators (``schedules/{cpu,cuda}/bsr.py``) and the backends take one
:class:`BsrSpec` instead of the shape, block, epilogue and dtypes one by one."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BsrSpec:
    """One BSR × dense product.

    ``bias``: add a ``bias[n]`` input. ``activation``: ``"none"``, ``"relu"`` or ``"gelu"`` (what
    each generator supports). ``dtype``: of x, the weights and y. ``x_dtype``: ``int8``/``uint8``
    makes it the quantized kernel (int8 weights, int32 accumulation, float32 ``y``; CPU only)."""

    m: int
    k: int
    n: int
    block: tuple[int, int]
    bias: bool = False
    activation: str = "none"
    dtype: str = "float32"
    x_dtype: str | None = None


__all__ = ["BsrSpec"]
