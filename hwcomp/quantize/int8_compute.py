"""The int8 ops as TE computes, and the lookup of the per-target provider that lays out and schedules them.

One definition per op (the arithmetic of ``qmath``), whatever the target:

* ``dense``: ``A[M, K]`` (int8/uint8) x ``W`` (int8, in the provider's packed layout) → int32,
  ``+ bias[N]`` (int32), then an :class:`Epilogue`;
* ``batch_matmul``: ``A[B, M, K] x B[B, K, N]`` (both int8/uint8, zero point 0) → int32 →
  ``float32 * (s_a s_b)``;
* ``conv2d``: NCHW, OIHW int8 weights, stride/padding/dilation, groups 1 → int32 + bias → epilogue.

A provider (``generic`` here, ``schedules/x86/int8.py``, ``schedules/arm/int8.py``,
``schedules/cuda/int8.py``) chooses the weight layout, packs the weights, and schedules the
dense kernel for its instructions (``tirx.is_scheduled``); anything it does not schedule is left
to the default rules (``TiledReduction`` on CPUs, dlight on GPUs), which handle int32-accumulating
reductions with these epilogues.

Epilogues (``Epilogue.kind``):

* ``float``: ``y = act(float32(acc + bias) * scale[n])`` → float32;
* ``requant``: ``q = clip(rshift_round(int64(acc + bias) * mult[n], shift[n]) + zp)`` → int8/uint8,
  ``relu`` clamps at ``zp``; exactly :func:`hwcomp.quantize.qmath.requantize`;
* ``requant_f32``: ``q = clip(round_half_even(float32(acc + bias) * mult[n]) + zp)`` with
  ``mult = s_x s_w / s_y`` in float32 (ONNX Runtime's requantization): one multiply, no 64-bit
  arithmetic, for targets without a vector 64-bit multiply (x86 before AVX-512); ``relu`` clamps at
  ``zp``. Within one code of ``requant`` (float32 rounding of ``acc + bias`` past 2^24 and of
  ``mult``);
* ``float_requant``: ``q = clip(round_half_even(act(float32(acc + bias) * scale[n]) * inv_out[n]) + zp)``
  with ``inv_out = 1 / s_y`` (divided by the next op's smoothing factors where it has them): a
  float activation such as GELU between two quantized ops; the result never leaves the kernel
  as float.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from tvm import te, tirx

from hwcomp.erf_approx import ERF_CLAMP, ERF_P, ERF_Q
from hwcomp.schedules.cpu.rules import MATERIALIZE
from hwcomp.schedules.int8_base import (  # noqa: F401  (re-exported: the providers' shared scaffolding)
    LAYOUTS,
    KernelProvider,
    _divisor,
    cpu_dot_desc,
    layout_fits,
    register_intrin,
    schedule_blocked_dense,
    scheduled,
)

ACTS = (None, "relu", "relu6", "silu", "gelu", "gelu_tanh")


@dataclasses.dataclass(frozen=True)
class Epilogue:
    kind: str = "float"  # float | requant | float_requant
    act: str | None = None
    out_dtype: str = "float32"
    out_scale: float = 1.0  # float_requant: the next op's activation scale
    out_zp: int = 0
    bits: int = 8
    # Float requantization rounds with the CPU's float -> int32 convert (``llvm.lrint``: x86
    # ``cvtps2dq``, round half to even like ``round``) and clamps in int32, which the saturating
    # packs to 8 bits absorb; LLVM CPU targets only (KernelProvider.lrint_requant).
    lrint: bool = False

    def __post_init__(self):
        assert self.kind in ("float", "requant", "requant_f32", "float_requant"), self.kind
        assert self.act in ACTS, self.act
        if self.kind in ("requant", "requant_f32"):
            assert self.act in (None, "relu"), "requant only fuses relu; use float_requant"

    @property
    def qrange(self) -> tuple[int, int]:
        from .qmath import qrange

        lo, hi = qrange(self.out_dtype, self.bits)
        if self.act == "relu":
            lo = max(lo, self.out_zp)
        return lo, hi


# ---------------------------------------------------------------------------------------------
# weight layouts: W[N, K] -> packed, and the index expression the compute reads it with
# ---------------------------------------------------------------------------------------------
# (the layout table, LAYOUTS, and layout_fits live in hwcomp.schedules.int8_base)


def weight_shape(layout: str, n: int, k: int) -> tuple[int, ...]:
    if layout == "nk":
        return (n, k)
    if layout == "kn":
        return (k, n)
    nb, kb = LAYOUTS[layout]
    return (n // nb, k // kb, nb, kb)


def pack_weight(wq: np.ndarray, layout: str) -> np.ndarray:
    """``wq[N, K]`` (int8) in ``layout``: ``[N/nb, K/kb, nb, kb]`` for the blocked ones."""
    if layout == "nk":
        return np.ascontiguousarray(wq)
    if layout == "kn":
        return np.ascontiguousarray(wq.T)
    n, k = wq.shape
    nb, kb = LAYOUTS[layout]
    return np.ascontiguousarray(wq.reshape(n // nb, nb, k // kb, kb).transpose(0, 2, 1, 3))


def _w_at(w, layout: str, n, k):
    if layout == "nk":
        return w[n, k]
    if layout == "kn":
        return w[k, n]
    nb, kb = LAYOUTS[layout]
    return w[n // nb, k // kb, n % nb, k % kb]


# ---------------------------------------------------------------------------------------------
# epilogue expressions
# ---------------------------------------------------------------------------------------------
def fast_erf(x):
    """Rational erf approximation (Eigen's ``generic_fast_erf_float``, :mod:`hwcomp.erf_approx`) that
    vectorizes; ``tirx.erf`` becomes a scalar libm call per element."""
    f = lambda v: tirx.const(v, "float32")
    x = tirx.max(tirx.min(x, f(ERF_CLAMP)), f(-ERF_CLAMP))
    x2 = x * x
    p = f(ERF_P[-1])
    for a in reversed(ERF_P[:-1]):
        p = x2 * p + f(a)
    p = x * p
    q = f(ERF_Q[-1])
    for b in reversed(ERF_Q[:-1]):
        q = x2 * q + f(b)
    return p / q


def fast_exp(x):
    """``exp(x)`` for float32 that vectorizes (``tirx.exp`` is a scalar libm call per element):
    ``2^n * p(f)`` with ``x log2(e) = n + f``, ``f`` in [-0.5, 0.5], a degree-5 polynomial for
    ``2^f`` (relative error below 1e-5 in float32) and ``2^n`` built in the exponent bits; ``x`` clamped to ±87."""
    f32 = lambda v: tirx.const(v, "float32")
    x = tirx.max(tirx.min(x, f32(87.0)), f32(-87.0))
    t = x * f32(1.4426950408889634)
    n = tirx.floor(t + f32(0.5))
    r = (t - n) * f32(0.6931471805599453)  # back to natural units: 2^f = e^r
    p = f32(1.0 / 120)
    for c in (1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0):
        p = p * r + f32(c)
    two_n = tirx.reinterpret("float32", (n.astype("int32") + tirx.const(127, "int32")) << tirx.const(23, "int32"))
    return p * two_n


def activation(x, act: str | None):
    f = lambda v: tirx.const(v, "float32")
    if act is None:
        return x
    if act == "relu":
        return tirx.max(x, f(0.0))
    if act == "relu6":
        return tirx.min(tirx.max(x, f(0.0)), f(6.0))
    if act == "silu":
        return x / (f(1.0) + fast_exp(-x))
    if act == "gelu":
        return x * (f(0.5) + fast_erf(x * f(math.sqrt(0.5))) * f(0.5))
    if act == "gelu_tanh":
        inner = f(math.sqrt(2.0 / math.pi)) * x * (f(1.0) + f(0.044715) * x * x)
        return f(0.5) * x * (f(1.0) + tirx.tanh(inner))
    raise ValueError(act)


def _requant_expr(v, mult, shift, epi: Epilogue):
    """``v`` int32 (acc + bias) → int8/uint8 with the fixed-point multiplier (round half away)."""
    i64 = lambda e: e.astype("int64")
    p = i64(v) * i64(mult)
    s = i64(shift)
    one = tirx.const(1, "int64")
    r = (p + (one << (s - one)) - tirx.Select(p < tirx.const(0, "int64"), one, tirx.const(0, "int64"))) >> s
    lo, hi = epi.qrange
    r = r + tirx.const(epi.out_zp, "int64")
    r = tirx.max(tirx.min(r, tirx.const(hi, "int64")), tirx.const(lo, "int64"))
    return r.astype(epi.out_dtype)


def _float_requant_expr(y, epi: Epilogue, inv_scale=None):
    lo, hi = epi.qrange
    if inv_scale is None:
        inv_scale = tirx.const(np.float32(1.0) / np.float32(epi.out_scale), "float32")
    if epi.lrint:
        # The float min keeps the convert in range above; below, x86's convert gives INT_MIN
        # (AArch64's saturates), which the int32 clamp takes to lo. With a zero point >= 0 the
        # clamp comes after adding it, where the saturating packs to 8 bits absorb it; a negative
        # one is clamped out first (INT_MIN plus it would overflow). Against the float path's
        # round, two float clamps and truncating convert: 3 fewer instructions per vector, 1x1
        # 64 -> 256 at 56x56 on the AVX2 kernels 1.07x (requant) and 1.09x (fused residual).
        zp = tirx.const(epi.out_zp, "int32")
        v = tirx.min(y * inv_scale, tirx.const(float(hi - epi.out_zp), "float32"))
        q = tirx.call_llvm_pure_intrin("int32", "llvm.lrint", v)
        if epi.out_zp < 0:
            return (tirx.max(q, tirx.const(lo - epi.out_zp, "int32")) + zp).astype(epi.out_dtype)
        return tirx.max(tirx.min(q + zp, tirx.const(hi, "int32")), tirx.const(lo, "int32")).astype(epi.out_dtype)
    q = tirx.round(y * inv_scale) + tirx.const(float(epi.out_zp), "float32")
    q = tirx.max(tirx.min(q, tirx.const(float(hi), "float32")), tirx.const(float(lo), "float32"))
    return q.astype(epi.out_dtype)


def epilogue_inputs(epi: Epilogue, n: int) -> list:
    """The per-channel parameter placeholders an epilogue reads (after A, W, bias)."""
    if epi.kind == "requant":
        return [te.placeholder(_s((n,)), "int32", "mult"), te.placeholder(_s((n,)), "int32", "shift")]
    if epi.kind == "requant_f32":  # s_x s_w / s_y per channel
        return [te.placeholder(_s((n,)), "float32", "mult")]
    if epi.kind == "float_requant":  # dequant scale, and 1/s_y per channel (smoothing makes it vary)
        return [te.placeholder(_s((n,)), "float32", "scale"), te.placeholder(_s((n,)), "float32", "inv_out")]
    return [te.placeholder(_s((n,)), "float32", "scale")]


def _apply_epilogue(acc_plus_bias, params, j, epi: Epilogue, residual=None):
    """The epilogue of output channel ``j``; ``residual`` (a float32 expression, only with the
    ``float`` and ``float_requant`` kinds) is added before the activation: a residual add fused
    into the conv (``y = act(acc * scale + r)``)."""
    # Requantized, ReLU is the clamp at the zero point (qrange) whatever the (positive) 1/s_y: the
    # max with 0 would be two more instructions per vector in every such epilogue. (A NaN now
    # requantizes to the top code rather than the zero point.)
    act = None if epi.kind == "float_requant" and epi.act == "relu" else epi.act
    if residual is not None:
        assert epi.kind in ("float", "float_requant"), epi.kind
        y = activation(acc_plus_bias.astype("float32") * params[0][j] + residual, act)
        return y if epi.kind == "float" else _float_requant_expr(y, epi, params[1][j])
    if epi.kind == "requant":
        return _requant_expr(acc_plus_bias, params[0][j], params[1][j], epi)
    if epi.kind == "requant_f32":  # one multiply; ReLU is the clamp at the zero point (qrange)
        return _float_requant_expr(acc_plus_bias.astype("float32"), epi, params[0][j])
    y = activation(acc_plus_bias.astype("float32") * params[0][j], act)
    if epi.kind == "float":
        return y
    return _float_requant_expr(y, epi, params[1][j])


# ---------------------------------------------------------------------------------------------
# computes (shapes in int64, as Relax's own legalized functions, so FuseTIR can merge them)
# ---------------------------------------------------------------------------------------------
def _s(shape) -> tuple:
    return tuple(tirx.IntImm("int64", int(v)) for v in shape)


def _r(extent: int, name: str):
    return te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", int(extent))), name)

def dense_func(m: int, k: int, n: int, a_dtype: str, layout: str, epi: Epilogue) -> tirx.PrimFunc:
    """``(A, W, bias, *epilogue params, out)`` PrimFunc; blocks ``acc`` (reduction) and ``out``."""
    a = te.placeholder(_s((m, k)), a_dtype, "A")
    w = te.placeholder(_s(weight_shape(layout, n, k)), "int8", "W")
    bias = te.placeholder(_s((n,)), "int32", "bias")
    params = epilogue_inputs(epi, n)
    r = _r(k, "k")
    acc = te.compute(_s((m, n)), lambda i, j: te.sum(a[i, r].astype("int32") * _w_at(w, layout, j, r).astype("int32"),
                                                  axis=r), name="acc")
    out = te.compute(_s((m, n)), lambda i, j: _apply_epilogue(acc[i, j] + bias[j], params, j, epi), name="out")
    return te.create_prim_func([a, w, bias, *params, out])


def _abs_max(dtype: str) -> int:
    info = np.iinfo(dtype)
    return max(abs(int(info.min)), int(info.max))


def batch_matmul_func(batch: tuple[int, ...], m: int, k: int, n: int, a_dtype: str, b_dtype: str,
                      scale: float, epi: Epilogue | None = None) -> tirx.PrimFunc:
    """``A[*batch, M, K] x B[*batch, K, N]`` → integer sum → ``float32 * scale`` (``float``), or
    requantized for the next quantized op (``float_requant``).

    The sum is accumulated in float32 when that is exact (every partial sum an integer below 2^24:
    ``K * max|a| * max|b| < 2^24``, K ≤ 514 for uint8 x int8 — attention's head dim and sequence
    length), int32 otherwise. No target has a tensorized int8 batch matmul here, and the generic
    schedule's int32 multiplies (``vpmulld``) are slower than float FMAs: MiniLM's attention
    matmuls went from 0.75 / 0.43 ms (int32) to 0.29 / 0.24 ms per call (2 Zen-1 cores).
    """
    epi = epi or Epilogue()
    nb = len(batch)
    a = a_in = te.placeholder(_s((*batch, m, k)), a_dtype, "A")
    b = b_in = te.placeholder(_s((*batch, k, n)), b_dtype, "B")
    r = _r(k, "k")
    acc_dtype = "float32" if k * _abs_max(a_dtype) * _abs_max(b_dtype) < 2 ** 24 else "int32"
    if acc_dtype == "float32":
        # Converted once into float32 copies (MATERIALIZE: the tiled schedule keeps them as stages)
        # instead of once per multiply inside the register tile (1.6x of the gain above).
        a = te.compute(a.shape, lambda *i: a(*i).astype("float32"), name="A_f32", attrs={MATERIALIZE: 1})
        b = te.compute(b.shape, lambda *i: b(*i).astype("float32"), name="B_f32", attrs={MATERIALIZE: 1})

    def acc_f(*idx):
        bi, i, j = idx[:nb], idx[nb], idx[nb + 1]
        return te.sum(a[(*bi, i, r)].astype(acc_dtype) * b[(*bi, r, j)].astype(acc_dtype), axis=r)

    acc = te.compute(_s((*batch, m, n)), acc_f, name="acc")
    def out_f(*idx):
        y = acc[idx].astype("float32") * tirx.const(scale, "float32")
        return y if epi.kind == "float" else _float_requant_expr(y, epi)

    out = te.compute(_s((*batch, m, n)), out_f, name="out")
    return te.create_prim_func([a_in, b_in, out])


def conv2d_func(x_shape, w_shape, strides, padding, dilation, a_dtype: str, epi: Epilogue,
                pad_value: int = 0) -> tirx.PrimFunc:
    """NCHW x OIHW (int8) → int32 + bias[O] → epilogue (channel axis 1). ``padding`` is
    ``(top, left, bottom, right)``; padded positions hold ``pad_value`` (the activation zero point)."""
    nbt, c, h, wd = x_shape
    o, _, kh, kw = w_shape
    sh, sw = strides
    pt, pl, pb, pr = padding
    dh, dw = dilation
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    x = te.placeholder(_s(x_shape), a_dtype, "A")
    w = te.placeholder(_s(w_shape), "int8", "W")
    bias = te.placeholder(_s((o,)), "int32", "bias")
    params = epilogue_inputs(epi, o)
    if any(padding):
        xp = te.compute(
            _s((nbt, c, h + pt + pb, wd + pl + pr)),
            lambda b, ci, y, z: tirx.if_then_else(
                tirx.all(y >= pt, y < h + pt, z >= pl, z < wd + pl), x[b, ci, y - pt, z - pl],
                tirx.const(pad_value, a_dtype)),
            name="pad")
    else:
        xp = x
    rc, ry, rx = _r(c, "rc"), _r(kh, "ry"), _r(kw, "rx")
    acc = te.compute(
        _s((nbt, o, oh, ow)),
        lambda b, f, y, z: te.sum(xp[b, rc, y * sh + ry * dh, z * sw + rx * dw].astype("int32")
                                  * w[f, rc, ry, rx].astype("int32"), axis=[rc, ry, rx]),
        name="acc")
    out = te.compute(_s((nbt, o, oh, ow)), lambda b, f, y, z: _apply_epilogue(acc[b, f, y, z] + bias[f], params, f, epi),
                     name="out")
    return te.create_prim_func([x, w, bias, *params, out])


def quantize_func(shape, scale: float, zp: int, dtype: str, bits: int = 8, per_channel: bool = False
                  ) -> tirx.PrimFunc:
    """float32 → int8/uint8: ``clip(round_half_even(x / scale) + zp)`` at ``bits`` (``R.quantize``
    semantics, with the clip range of ``bits``). ``per_channel``: a second input ``f[C]`` (last axis)
    and ``round(x * f[c])`` instead — smoothed activations, ``f = 1 / (s_c * scale)``."""
    from .qmath import qrange

    lo, hi = qrange(dtype, bits)
    x = te.placeholder(_s(shape), "float32", "x")
    fch = te.placeholder(_s((shape[-1],)), "float32", "f") if per_channel else None

    def f(*idx):
        v = x[idx] * fch[idx[-1]] if per_channel else x[idx] / tirx.const(scale, "float32")
        q = tirx.round(v) + tirx.const(float(zp), "float32")
        return tirx.max(tirx.min(q, tirx.const(float(hi), "float32")), tirx.const(float(lo), "float32")).astype(dtype)

    y = te.compute(_s(shape), f, name="quantize")
    return te.create_prim_func([x, fch, y] if per_channel else [x, y])


def dequantize_func(shape, scale: float, zp: int, dtype: str) -> tirx.PrimFunc:
    x = te.placeholder(_s(shape), dtype, "q")
    y = te.compute(_s(shape), lambda *i: tirx.const(scale, "float32")
                   * (x[i].astype("int32") - tirx.const(zp, "int32")).astype("float32"), name="dequantize")
    return te.create_prim_func([x, y])


def get_provider(target) -> KernelProvider:
    """The int8 kernel provider for a :class:`~hwcomp.target.Target` (its backend's, see
    :func:`hwcomp.schedules.backends.backend_for`); the generic one without a target."""
    if target is None:
        return KernelProvider()
    from hwcomp.schedules.backends import backend_for

    return backend_for(target).int8_provider(target)


def tvm_const(arr: np.ndarray):
    from tvm import relax

    return relax.const(np.ascontiguousarray(arr))


__all__ = ["Epilogue", "KernelProvider", "batch_matmul_func", "conv2d_func", "dense_func", "dequantize_func",
           "get_provider", "pack_weight", "quantize_func", "weight_shape"]
