"""Int8 Winograd convolution F(m x m, 3 x 3) on the blocked int8 codes: computes, weight transform,
the NumPy reference.

A stride-1 3x3 int8 convolution as ``Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`` (Lavin & Gray 2016, the
points 0, ±1, ±2 that make ``A`` and ``B`` integer): m = 4 needs 36 multiplies per 4x4 output tile
and channel pair instead of 144. The transformed inputs do not fit 8 bits, so the products are
int16 x int16 pairs (``vpdpwssd`` / ``vpmaddwd``: half ``vpdpbusd``'s products per instruction; on AVX2 one
multiply uop per 16 products, as many as the u8 x s8 step's ``vpmaddubsw`` + ``vpmaddwd`` per 32
do): m = 4 still issues 2x fewer product instructions with VNNI and 4x fewer multiply uops on
AVX2.

The arithmetic, per layer (input codes ``x`` with zero point ``z``, weight codes ``wq [O, C, 3, 3]``
with the direct conv's per-channel scales):

1. ``V_e = (Bᵀ (x - z) B)_e`` for each of the ``a²`` tile positions ``e``: exact in int16 (``B``
   integer; ``|V| ≤ 100 · 255`` for m = 4). ``schedules/cpu/winograd.py``'s input transform.
2. ``U_e = (G wq Gᵀ)_e`` is fractional (``G``'s rows have denominators ``s_i`` = 4, 6, 6, 24, 24,
   1 for m = 4), but ``s_i s_j U_(i,j)`` is an integer. Position ``e`` gets a code bound
   ``umax_e = (2^31 - 1) / (C · vmax_e)`` (``vmax_e``: the largest ``|V_e|`` any input can make,
   exact from ``B`` and the code range), so ``M_e`` cannot overflow int32 for any input. Where the
   integer ``U_e`` of an output channel fits the bound it is stored exactly (``ρ = 1 / (s_i s_j)``);
   otherwise it is rounded to the bound per (position, output channel), ``ρ`` its step
   (:func:`transform_weight`).
3. ``M_e = Σ_c V_e U_e``, int32: an ordinary blocked int8-conv-shaped kernel (positions as images,
   tiles as pixels) tensorized with the provider's ``winograd_dot``, stored as ``ρ ⊙ M`` in float32
   (:func:`product_func`).
4. ``Aᵀ (ρ ⊙ M) A`` in float32 (``A`` integer) is the direct conv's accumulator
   ``Σ (x - z) wq`` — up to float32 rounding (``ρ = 1/24²`` is not a float32 fraction), where every
   ``U_e`` was stored exactly, and up to ``U``'s rounding elsewhere — plus the bias (without the
   zero-point term), into the blocked int8 conv's own epilogue (:func:`output_func`).

:func:`reference` computes steps 1-4 in NumPy; the tests hold the kernels to it.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from tvm import te, tirx

from hwcomp.schedules.cpu.winograd import _combine, _select, tiles, winograd_matrices

from .int8_compute import Epilogue, _apply_epilogue, _s, epilogue_inputs
from .int8_conv import BLOCK, Residual, out_size, pack_conv_weight

#: Block annotation on the output transform's result stage (``schedules/cpu/int8_winograd.py``).
TRANSFORM_BLOCK = "transform"
INT32_MAX = 2**31 - 1
#: Widest input the Winograd takes. The overflow bound shrinks the transformed weights' codes as
#: the channels grow; against the float conv (random N(0, 1) weights, ReLU-like and uniform codes)
#: the int8 Winograd's relative error is the direct int8 conv's (weight rounding) at 64 channels
#: (U exact), 1.02-1.03x it at 256, but 1.3-1.5x at 512.
MAX_CHANNELS = 256


def use_int_winograd(channels_in: int, channels_out: int, oh: int, ow: int, lanes: int) -> int:
    """The tile ``m`` for a stride-1 undilated 3x3 int8 conv (4), or 0 for the direct kernel; both
    channel counts must fill a block. ``lanes``: the product dot's int32 lanes.

    Measured alone on the Zen 4 (2 threads, ResNet-50's shapes, float epilogue, against the
    blocked int8 conv): with VNNI (16 lanes) F(4, 3) 1.8x at 64 ch 56x56 and 1.7x at 128 ch 28x28
    but 1.0x at 256 ch 14x14 (16 tiles: its 4.7 MB of int16 weights, 8x the direct's, serve 16
    tiles), so from 32 tiles; F(2, 3) 0.8x at 512 ch 7x7 (2.25x fewer products at half the rate).
    With the AVX2 dot (8 lanes; an int16 pair costs no more multiply uops per product than the
    u8 x s7 step) F(4, 3) 1.7x, 2.6x and 1.9x at those three, so from 16 tiles; F(2, 3) at 7x7 ran
    1.2x alone but 0.9x inside int8 ResNet-50 (8.4 MB of weights per layer from memory).
    Inputs wider than :data:`MAX_CHANNELS` stay direct (fidelity, there)."""
    if channels_in < BLOCK or channels_out < BLOCK or channels_in > MAX_CHANNELS:
        return 0
    th, tw = tiles(oh, ow, 4)
    return 4 if th * tw >= (32 if lanes >= 16 else 16) else 0


def _row_scales(g: np.ndarray) -> np.ndarray:
    """Per row of ``G``: the least integer making the row integer (its entries' denominators)."""
    out = []
    for row in g:
        den = 1
        for v in row:
            den = np.lcm(den, Fraction(float(v)).limit_denominator(1000).denominator)
        out.append(den)
    return np.asarray(out, np.int64)


def v_bounds(m: int, lo: int, hi: int) -> np.ndarray:
    """``[a²]``: the largest ``|V_e|`` over inputs ``x - z`` in ``[lo, hi]`` (exact: a linear form's
    extremes on a box)."""
    _, b, _ = winograd_matrices(m, integer=True)
    alpha = m + 2
    out = np.zeros(alpha * alpha, np.int64)
    for i in range(alpha):
        for j in range(alpha):
            c = np.outer(b[:, i], b[:, j]).round().astype(np.int64)
            top = np.maximum(c * lo, c * hi).sum()
            bottom = np.minimum(c * lo, c * hi).sum()
            out[i * alpha + j] = max(top, -bottom)
    return out


def transform_weight(wq: np.ndarray, m: int, vmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``wq [O, C, 3, 3]`` codes → ``(U [a², O, C] int16, ρ [a², O] float64)`` with
    ``ρ[e, o] · U[e, o, c] ≈ (G wq[o, c] Gᵀ)_e`` (exact where the bound allows; module docstring)."""
    o, c, kh, kw = wq.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"int8 Winograd: a 3x3 kernel, got {kh}x{kw}")
    _, _, g = winograd_matrices(m, integer=True)
    alpha = m + 2
    s = _row_scales(g)
    gi = np.round(g * s[:, None]).astype(np.int64)  # integer rows
    u_int = np.einsum("ak,ockl,bl->aboc", gi, wq.astype(np.int64), gi).reshape(alpha * alpha, o, c)
    den = np.outer(s, s).reshape(-1).astype(np.float64)  # s_i s_j per position
    umax = np.minimum(32767, INT32_MAX // (np.maximum(vmax, 1) * max(c, 1)))
    peak = np.abs(u_int).max(axis=2)  # [a², O]
    exact = peak <= umax[:, None]
    u = np.empty_like(u_int)
    rho = np.empty(peak.shape, np.float64)
    for e in range(alpha * alpha):
        step = np.where(exact[e], 1.0, peak[e] / umax[e])  # in units of 1 / den
        u[e] = np.where(exact[e][:, None], u_int[e], np.round(u_int[e] / step[:, None]))
        rho[e] = step / den[e]
    return u.astype(np.int16), rho


def pack_weight(u: np.ndarray, lanes_k: int = 2) -> np.ndarray:
    """``U [a², O, C]`` int16 → ``[a², O/16, C/16, 1, 1, 8, 16, 2]`` (the products' operand, zero
    padded): per position :func:`int8_conv.pack_conv_weight`'s layout with int16 pairs."""
    return np.ascontiguousarray(np.stack([pack_conv_weight(ue[:, :, None, None], BLOCK, BLOCK, lanes_k)
                                          for ue in u]))


def reference(x: np.ndarray, wq: np.ndarray, zp: int, padding, m: int, lo: int = 0, hi: int = 255) -> np.ndarray:
    """Steps 1-4 in NumPy (float64 for step 4): ``x [N, C, H, W]`` codes, ``wq [O, C, 3, 3]`` →
    ``[N, O, OH, OW]``, the direct conv's ``Σ (x - zp) wq`` up to ``U``'s rounding. Raises if an
    int32 product sum would overflow (the bound makes that impossible)."""
    a, b, _ = winograd_matrices(m, integer=True)
    a, b = np.round(a).astype(np.int64), np.round(b).astype(np.int64)
    n, c, h, w = x.shape
    o = wq.shape[0]
    pt, pl, pb, pr = padding
    oh, ow = out_size(h, 3, 1, 1, pt, pb), out_size(w, 3, 1, 1, pl, pr)
    th, tw = tiles(oh, ow, m)
    alpha = m + 2
    xp = np.zeros((n, c, th * m + 2, tw * m + 2), np.int64)
    xp[:, :, pt:pt + h, pl:pl + w] = x.astype(np.int64) - zp
    u, rho = transform_weight(wq, m, v_bounds(m, lo - zp, hi - zp))
    y = np.zeros((n, o, th * m, tw * m))
    for ty in range(th):
        for tx in range(tw):
            d = xp[:, :, ty * m:ty * m + alpha, tx * m:tx * m + alpha]
            v = np.einsum("ki,nckl,lj->nijc", b, d, b).reshape(n, alpha * alpha, c)
            mm = np.einsum("nec,eoc->neo", v, u.astype(np.int64))
            if np.abs(mm).max(initial=0) > INT32_MAX:
                raise OverflowError("int8 Winograd product overflows int32")
            mf = (mm * rho[None]).reshape(n, alpha, alpha, o)
            y[:, :, ty * m:ty * m + m, tx * m:tx * m + m] = np.einsum("ki,nklo,lj->noij", a, mf, a)
    return y[:, :, :oh, :ow]


def product_func(positions: int, cb: int, n_tiles: int, ob: int, reg_n: int) -> tirx.PrimFunc:
    """``(V [1, a²·C/16, 1, P, 16] int16, U packed, ρ [a²·O'] float32, M [a², O/16, 1, P, 16] float32)``:
    per position the tiles x C times C x O product in int32, scaled by ``ρ`` on the way out, in the
    blocked int8 conv's shape (position = image, tile = pixel; blocks ``acc`` and ``out``), so its
    schedule tensorizes it with the int16 dot and applies ``ρ`` on the register tile."""
    from .int8_conv import REG_N_ATTR

    x = BLOCK
    pp = -(-n_tiles // reg_n) * reg_n
    v = te.placeholder(_s((1, positions * cb, 1, n_tiles, x)), "int16", "V")
    u = te.placeholder(_s((positions, ob, cb, 1, 1, x // 2, x, 2)), "int16", "W")
    rho = te.placeholder(_s((positions * ob * x,)), "float32", "rho")
    i64 = lambda e: tirx.IntImm("int64", e)
    rc = te.reduce_axis((i64(0), i64(cb)), "rc")
    ry = te.reduce_axis((i64(0), i64(1)), "ry")
    rx = te.reduce_axis((i64(0), i64(1)), "rx")
    rf = te.reduce_axis((i64(0), i64(x // 2)), "rf")
    rk = te.reduce_axis((i64(0), i64(2)), "rk")
    acc = te.compute(
        _s((positions, ob, 1, pp, x)),
        lambda e, o, y, p, l: te.sum(
            v[0, e * cb + rc, y + ry, tirx.min(p + rx, i64(n_tiles - 1)), rf * 2 + rk].astype("int32")
            * u[e, o, rc, ry, rx, rf, l, rk].astype("int32"), axis=[rc, ry, rx, rf, rk]),
        name="acc")
    out = te.compute(_s((positions, ob, 1, n_tiles, x)),
                     lambda e, o, y, p, l: acc[e, o, y, p, l].astype("float32") * rho[(e * ob + o) * x + l],
                     name="out")
    return te.create_prim_func([v, u, rho, out]).with_attr(REG_N_ATTR, reg_n)


def output_func(prod_shape, m: int, n: int, oh: int, ow: int, channels: int, epi: Epilogue, nchw_out: bool,
                residual: Residual | None = None) -> tirx.PrimFunc:
    """``(M [a², O/16, 1, P, 16] float32 (ρ applied), bias [O'] int32, *epilogue params, [R,] out)``:
    ``Aᵀ M A`` per tile (stage :data:`TRANSFORM_BLOCK`, whole tiles), + bias, the blocked int8
    conv's epilogue; ``out`` blocked ``[N, O/16, OH, OW, 16]`` or NCHW (``nchw_out``)."""
    _, ob, _, _, x = (int(d) for d in prod_shape)
    alpha = m + 2
    th, tw = tiles(oh, ow, m)
    a, _, _ = winograd_matrices(m, integer=True)
    prod = te.placeholder(_s(prod_shape), "float32", "M")
    bias = te.placeholder(_s((ob * x,)), "int32", "bias")
    params = epilogue_inputs(epi, ob * x)

    def value(b_, k, y, xx, v):
        p = b_ * (th * tw) + y // m * tw + xx // m
        branches = []
        for i in range(m):
            for j in range(m):
                rows = [_combine(list(a[:, j]), [prod[ai * alpha + bj, k, 0, p, v] for bj in range(alpha)])
                        for ai in range(alpha)]
                branches.append(_combine(list(a[:, i]), rows))
        return _select(y % m * m + xx % m, branches)

    tr = te.compute(_s((n, ob, th * m, tw * m, x)), value, name=TRANSFORM_BLOCK)
    shape5 = (n, ob, oh, ow, x)
    r = residual.placeholder(shape5) if residual is not None else None

    def finish(b_, k, y, xx, v):
        ch = k * x + v
        t = tr[b_, k, y, xx, v]
        acc = tirx.round(t).astype("int32") + bias[ch] if epi.kind == "requant" else \
            t + bias[ch].astype("float32")
        return _apply_epilogue(acc, params, ch, epi, None if r is None else residual.value(r, b_, k, y, xx, v))

    if nchw_out:
        out = te.compute(_s((n, channels, oh, ow)), lambda b_, f, y, xx: finish(b_, f // x, y, xx, f % x), name="out")
    else:
        out = te.compute(_s(shape5), finish, name="out")
    args = [prod, bias, *params] + ([r] if r is not None else []) + [out]
    return te.create_prim_func(args)


__all__ = [
    "output_func",
    "pack_weight",
    "product_func",
    "reference",
    "transform_weight",
    "use_int_winograd",
    "v_bounds",
]
