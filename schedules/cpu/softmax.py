"""Softmax over the last axis, written for the CPU row-reduction schedule (``rows.RowReduction``).

Differences from ``topi.nn.softmax``/``fast_softmax``, each measured on an AVX-512 Xeon:

- **Rows padded to the reduction's vector step** (``multiple``): the schedule splits a row's max
  and sum into vector-wide partial accumulators, which needs a row length divisible by that width
  (TVM's ``rfactor`` of a split that does not divide drops the split's predicate and reads past
  the row). Attention scores over 197 tokens (ViT) or 1500 frames (Whisper) were reduced by one
  serial scalar chain per row instead. The padding is a per-row stage (the lowest finite value past
  the row: the max's identity, and ``exp`` gives 0 there); the result is written at the original
  length.
- **One reciprocal per row, then a multiply**: ``vdivps`` on 512-bit vectors was the hottest
  instruction of the old kernel (about 16 cycles each).
- ``safe``: rows whose entries are all ``-inf`` (fully masked) give 0, as PyTorch's
  ``_safe_softmax`` (what ``scaled_dot_product_attention`` exports to) does with a second pass
  over the scores (``x == -inf`` reduced per row); here the row's max tells.
"""

from __future__ import annotations

import tvm
from tvm import te, topi


def row_softmax(x: te.Tensor, multiple: int = 1, fast_exp: bool = True, safe: bool = False) -> te.Tensor:
    """``softmax(x, axis=-1)`` for a static last dimension; ``multiple``: pad rows to it;
    ``safe``: fully ``-inf`` rows give 0 (else NaN, like ``torch.softmax``; a row whose max is
    the lowest finite float counts as masked too)."""
    *rows, length = (int(d) if isinstance(d, tvm.tirx.IntImm) else d for d in x.shape)
    if not isinstance(length, int):
        raise TypeError("row_softmax: the row length must be static")
    dtype = x.dtype
    width = -(-length // multiple) * multiple if length > multiple else length
    # padding: te.max's identity, the lowest finite value (exp of it minus the max is 0)
    lowest = tvm.tirx.min_value(dtype)
    if width != length:
        xp = te.compute((*rows, width), lambda *i: tvm.tirx.if_then_else(i[-1] < length, x(*i), lowest),
                        name="row_pad")
    else:
        xp = x
    k = te.reduce_axis((0, width), "k")
    mx = te.compute(tuple(rows), lambda *r: te.max(xp(*r, k), axis=k), name="row_max")
    shifted = te.compute((*rows, width), lambda *i: xp(*i) - mx(*i[:-1]), name="row_shift")
    e = topi.fast_exp(shifted) if fast_exp else topi.exp(shifted)
    k2 = te.reduce_axis((0, width), "k2")
    s = te.compute(tuple(rows), lambda *r: te.sum(e(*r, k2), axis=k2), name="row_sum")
    one, zero = tvm.tirx.const(1.0, dtype), tvm.tirx.const(0.0, dtype)

    def out(*i):
        p = e(*i) * (one / s(*i[:-1]))
        # te.max starts from the lowest finite value: that is a fully -inf row's max
        return tvm.tirx.Select(mx(*i[:-1]) <= lowest, zero, p) if safe else p

    return te.compute((*rows, length), out, name="row_softmax")
