"""Quantization arithmetic in NumPy: the reference every kernel is tested against bit for bit.

Conventions (also what the TVM kernels compute):

* ``quantize(x, s, zp) = clip(round_half_even(x / s) + zp, qmin, qmax)`` (``R.quantize``);
  ``dequantize(q, s, zp) = s * (q - zp)``.
* Weights: symmetric, codes ``-qmax..qmax`` (127 for 8 bits), one scale per output channel
  (``max|W[n, :]| / qmax``) or per tensor.
* Accumulation: ``int8 x int8 -> int32``; the float bias becomes ``round(b / (s_x s_w[n]))`` in
  int32, and an activation zero point ``zp_x`` is folded into it as ``-zp_x * sum_k Wq[n, k]``.
* Requantization (int32 -> int8 for the next quantized op, no float): the real multiplier
  ``m = s_x s_w[n] / s_y`` is a fixed-point pair ``(M, shift)`` with ``M`` in ``[2^30, 2^31)``
  and ``m ~= M * 2^-shift``; ``y = clip(rshift_round(acc * M, shift) + zp_y)`` where the product
  is exact in int64 and ``rshift_round`` rounds half **away from zero**:
  ``(p + 2^(shift-1) - (p < 0)) >> shift`` (arithmetic shift).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import HwcompError
from ..metrics import cosine  # noqa: F401  (re-exported: qmath.cosine)


def qrange(dtype: str, bits: int = 8) -> tuple[int, int]:
    """Clip range of activation codes: int8 ``-2^(b-1)..2^(b-1)-1``, uint8 ``0..2^b-1``."""
    if dtype == "uint8":
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def activation_params(lo: float, hi: float, mode: str, bits: int = 8, unsigned: bool = False
                      ) -> tuple[float, int, str]:
    """``(scale, zero_point, dtype)`` for a calibrated range ``[lo, hi]``.

    symmetric: zp 0, int8, scale ``max(|lo|, |hi|) / qmax``; with ``unsigned`` (range is
    non-negative) uint8, zp 0, scale ``hi / (2^bits - 1)``. affine: int8 codes ``-2^(b-1)..2^(b-1)-1``
    cover ``[min(lo, 0), max(hi, 0)]`` with an integer zero point.
    """
    lo, hi = float(min(lo, 0.0)), float(max(hi, 0.0))
    tiny = 1e-8
    if unsigned and lo >= 0.0:
        return max(hi, tiny) / ((1 << bits) - 1), 0, "uint8"
    if mode == "symmetric":
        qmax = (1 << (bits - 1)) - 1
        return max(max(-lo, hi), tiny) / qmax, 0, "int8"
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    scale = max(hi - lo, tiny) / (qmax - qmin)
    zp = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return scale, zp, "int8"


def _along(scale, zp, ndim: int, axis: int | None):
    """``scale`` (float32) and ``zp`` (int32), per-channel ones shaped to broadcast along ``axis``."""
    scale, zp = np.asarray(scale, np.float32), np.asarray(zp, np.int32)
    if axis is not None and scale.ndim == 1:
        shape = [1] * ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return scale, zp


def quantize(x: np.ndarray, scale, zp, dtype: str = "int8", bits: int = 8, axis: int | None = None) -> np.ndarray:
    """``clip(round_half_even(x / scale) + zp)`` in float32 arithmetic, as ``R.quantize`` does."""
    x = np.asarray(x, np.float32)
    scale, zp = _along(scale, zp, x.ndim, axis)
    lo, hi = qrange(dtype, bits)
    q = np.round(x / scale) + zp
    return np.clip(q, lo, hi).astype(dtype)


def dequantize(q: np.ndarray, scale, zp=0, axis: int | None = None) -> np.ndarray:
    scale, zp = _along(scale, zp, q.ndim, axis)
    return (scale * (q.astype(np.int32) - zp).astype(np.float32)).astype(np.float32)


def quantize_weight(w: np.ndarray, bits: int = 8, per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric weight quantization over axis 0 (output channels): ``(Wq int8, scales float32[N])``.

    With ``per_channel=False`` all channels share one scale (the array still has N entries).
    """
    w = np.asarray(w, np.float32)
    qmax = (1 << (bits - 1)) - 1
    n = w.shape[0]
    amax = np.abs(w.reshape(n, -1)).max(axis=1) if w.size else np.zeros(n, np.float32)
    if not per_channel:
        amax = np.full(n, amax.max() if n else 0.0, np.float32)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = (n,) + (1,) * (w.ndim - 1)
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def fixed_point(m: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real multipliers ``m > 0`` as ``(M int32 in [2^30, 2^31), shift int32)``, ``m ~= M * 2^-shift``.

    ``shift`` is clamped to ``[1, 62]`` (multipliers from ``2^-31`` to ``2^30``); the relative
    error of the pair is below ``2^-31``.
    """
    m = np.atleast_1d(np.asarray(m, np.float64))
    if np.any(~np.isfinite(m)) or np.any(m <= 0):
        raise HwcompError(f"requantization multiplier must be positive and finite, got {m[(m <= 0) | ~np.isfinite(m)][:3]}")
    mant, exp = np.frexp(m)  # m = mant * 2^exp, mant in [0.5, 1)
    big = np.round(mant * (1 << 31)).astype(np.int64)
    carry = big == (1 << 31)
    big = np.where(carry, 1 << 30, big)
    exp = exp + carry
    shift = 31 - exp
    if np.any(shift < 1) or np.any(shift > 62):
        raise HwcompError(f"requantization multiplier out of range: {m[(shift < 1) | (shift > 62)][:3]}")
    return big.astype(np.int32), shift.astype(np.int32)


def rshift_round(p: np.ndarray, shift) -> np.ndarray:
    """``round(p / 2^shift)`` with ties away from zero, exact on int64."""
    p = np.asarray(p, np.int64)
    shift = np.asarray(shift, np.int64)
    return (p + (np.int64(1) << (shift - 1)) - (p < 0)) >> shift


def requantize(acc: np.ndarray, mult, shift, zp: int, dtype: str = "int8", bits: int = 8,
               relu: bool = False) -> np.ndarray:
    """int32 accumulator (+ bias already added) → int8/uint8 codes, fixed-point, per last axis."""
    r = rshift_round(np.asarray(acc, np.int64) * np.asarray(mult, np.int64), shift) + zp
    lo, hi = qrange(dtype, bits)
    if relu:
        lo = max(lo, zp)
    return np.clip(r, lo, hi).astype(dtype)


def bias_int32(bias: np.ndarray | None, s_x: float, s_w: np.ndarray, wq: np.ndarray, zp_x: int = 0) -> np.ndarray:
    """``round(b / (s_x s_w)) - zp_x * sum_k Wq[n, k]`` as int32 (``wq`` is ``[N, ...]``)."""
    n = wq.shape[0]
    b = np.zeros(n, np.float64) if bias is None else np.asarray(bias, np.float64).reshape(n)
    out = np.round(b / (np.float64(s_x) * s_w.astype(np.float64)))
    if zp_x:
        out = out - np.float64(zp_x) * wq.reshape(n, -1).astype(np.int64).sum(axis=1)
    if np.any(np.abs(out) >= 2**31):
        raise HwcompError("quantized bias overflows int32 (activation scale too small for this bias)")
    return out.astype(np.int32)


def gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    x = np.asarray(x, np.float32)
    return (x * (0.5 + erf(x * np.float32(math.sqrt(0.5))) * 0.5)).astype(np.float32)
