"""Int8 convolution in the blocked channel layout NCHW[x]c: computes, weight packing, layout I/O.

Activations between int8 convolutions are ``[N, C/x, H, W, x]`` bytes with ``x`` = :data:`BLOCK`
(16: two AVX2 or one AVX-512 register of int32 outputs, four NEON ones); channels past ``C`` are
padded (their weights are zero, so whatever they hold never reaches a real output). The weights are
packed at compile time for the target's dot instruction (``lanes`` int32 outputs x ``kb`` bytes):
``[O/x, C/xi, KH, KW, xi/kb, x, kb]``. The int32 accumulator gets the bias and an :class:`Epilogue`:
requantized (fixed point) to the next layer's int8 — the output stays blocked — or dequantized to
float32 and written NCHW for float consumers. Layout transforms exist only where a float value
enters (``quantize_blocked_func``: quantize and block in one pass) or an int8 value leaves
(``dequantize_blocked_func``). The schedules are ``schedules/cpu/int8_conv.py``'s.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm import te, tirx

from hwcomp.schedules.int8_base import BLOCK, in_block

from .int8_compute import Epilogue, _apply_epilogue, _s, epilogue_inputs

REG_N_ATTR = "hwcomp.reg_n"
#: ``[stride_h, stride_w, dilation_h, dilation_w]`` of a blocked conv (schedules read it).
GEOMETRY_ATTR = "hwcomp.conv_geometry"


def out_size(size, k, stride, dilation, before, after) -> int:
    return (size + before + after - (k - 1) * dilation - 1) // stride + 1


def row_view(oh: int, ow: int, reg_n_of, blocks: int, cores: int) -> tuple[int, int]:
    """``(rows, width)`` to run a stride-1 unpadded 1x1 conv's ``oh x ow`` output pixels as: the
    pixels are independent and contiguous in the blocked layout, so the conv may run on them as
    one row (a free reshape) when that wastes fewer padded pixels than whole rows do, with tiles
    at least as wide (``reg_n_of(width)``: pixels per register tile). A 7x7 map with 3- to
    5-pixel tiles (AVX2's exact 8x4 step, NEON) pads each row of 7 to 8, its 49 pixels as one row
    to 50; AVX2's saturating step tiles 7 pixels and keeps ResNet's rows. Kept as rows where one
    row would leave fewer than two output-channel blocks per core to run in parallel."""
    flat = oh * ow
    r_rows, r_flat = reg_n_of(ow), reg_n_of(flat)
    padded_rows = oh * -(-ow // r_rows) * r_rows
    padded_flat = -(-flat // r_flat) * r_flat
    if oh > 1 and padded_flat < padded_rows and r_flat >= r_rows and blocks >= 2 * max(cores, 1):
        return 1, flat
    return oh, ow


def pack_conv_weight(wq: np.ndarray, xi: int, xo: int, kb: int, halves: int = 1, taps: int | None = None) -> np.ndarray:
    """``wq [O, C, KH, KW]`` int8 → ``[O/xo, C/xi, KH, KW, xi/kb, xo, kb]`` (channels zero-padded);
    with ``halves`` = 2, ``[O/xo, C/xi, KH, KW, xi/kb, 2, xo, kb/2]`` (a dot that takes each lane's
    ``kb`` bytes as two vectors). ``taps`` > KW: the kernel rows padded with zero taps to ``taps``
    (AMX reads a kernel row's taps as one 64-byte operand, ``schedules/x86/amx.py``)."""
    if taps is not None and taps > wq.shape[3]:
        wq = np.concatenate([wq, np.zeros((*wq.shape[:3], taps - wq.shape[3]), wq.dtype)], axis=3)
    o, c, kh, kw = wq.shape
    op, cp = -(-o // xo) * xo, -(-c // xi) * xi
    w = np.zeros((op, cp, kh, kw), wq.dtype)  # int8 codes; int16 for the int8 Winograd's products
    w[:o, :c] = wq
    w = w.reshape(op // xo, xo, cp // xi, xi // kb, halves, kb // halves, kh, kw)
    w = w.transpose(0, 2, 6, 7, 3, 4, 1, 5)
    if halves == 1:
        w = w.reshape(op // xo, cp // xi, kh, kw, xi // kb, xo, kb)
    return np.ascontiguousarray(w)


def pack_depthwise_weight(wq: np.ndarray, x: int) -> np.ndarray:
    """``wq [C, 1, KH, KW]`` int8 → ``[C/x, KH, KW, x]`` (channels zero-padded)."""
    c, _, kh, kw = wq.shape
    cp = -(-c // x) * x
    w = np.zeros((cp, kh, kw), np.int8)
    w[:c] = wq[:, 0]
    return np.ascontiguousarray(w.reshape(cp // x, x, kh, kw).transpose(0, 2, 3, 1))


def pad_channels(v: np.ndarray, n: int, fill=0) -> np.ndarray:
    """A per-channel vector padded to ``n`` entries with ``fill``."""
    out = np.full((n,), fill, v.dtype)
    out[: v.shape[0]] = v
    return out


def _padded_input(x, padding, pad_value, dtype, slack_rows: int = 0):
    """The input with its zero-point padding (``x`` itself without), and ``slack_rows`` more rows
    below that no output uses (a kernel that reads whole tap groups runs past the last row)."""
    n, cb, h, w, xi = (int(d) for d in x.shape)
    pt, pl, pb, pr = padding
    if not any(padding) and not slack_rows:
        return x, w
    wp = w + pl + pr
    xp = te.compute(
        _s((n, cb, h + pt + pb + slack_rows, wp, xi)),
        lambda b, c, y, z, v: tirx.if_then_else(
            tirx.all(y >= pt, y < h + pt, z >= pl, z < w + pl), x[b, c, y - pt, z - pl, v],
            tirx.const(pad_value, dtype)),
        name="pad")
    return xp, wp


def _col(z, wp: int, ow: int, owp: int):
    # Columns of the padded tile past the real output read a clamped (valid) input column; their
    # results are never stored.
    return z if owp == ow else tirx.min(z, tirx.IntImm("int64", wp - 1))


@dataclasses.dataclass(frozen=True)
class Residual:
    """A residual add fused into a blocked conv's epilogue: the other operand, blocked like the output
    (``[N, O/x, OH, OW, x]``), float32 or int8/uint8 codes with ``scale`` and ``zp``."""

    dtype: str = "float32"
    scale: float = 1.0
    zp: int = 0

    def placeholder(self, shape5):
        return te.placeholder(_s(shape5), self.dtype, "R")

    def value(self, r, *idx):
        """The residual at ``idx`` as float32."""
        if self.dtype == "float32":
            return r[idx]
        v = r[idx].astype("float32")
        if self.zp:
            v = v - tirx.const(float(self.zp), "float32")
        return v * tirx.const(float(np.float32(self.scale)), "float32")


def _output(acc, bias, params, epi: Epilogue, channels: int, x: int, nchw: bool, shape5, res=None, r=None):
    n, _, oh, ow, _ = shape5
    if nchw:
        return te.compute(
            _s((n, channels, oh, ow)),
            lambda b, f, y, z: _apply_epilogue(acc[b, f // x, y, z, f % x] + bias[f], params, f, epi,
                                               None if res is None else res.value(r, b, f // x, y, z, f % x)),
            name="out")
    return te.compute(
        _s(shape5),
        lambda b, c, y, z, v: _apply_epilogue(acc[b, c, y, z, v] + bias[c * x + v], params, c * x + v, epi,
                                              None if res is None else res.value(r, b, c, y, z, v)),
        name="out")


def conv2d_nchwc_int8_func(x_shape, channels_out: int, kernel: tuple[int, int], strides, padding, dilation,
                           a_dtype: str, epi: Epilogue, pad_value: int, kb: int, reg_n: int,
                           nchw_out: bool, halves: int = 1, residual: Residual | None = None,
                           w_taps: int | None = None) -> tirx.PrimFunc:
    """``(A [N, C/xi, H, W, xi], W packed, bias[O'], *epilogue params[O'], [R,] out)`` with ``O'`` the
    output channels padded to :data:`BLOCK`; ``out`` is ``[N, O/x, OH, OW, x]`` (int8 epilogues,
    or float32 blocked) or NCHW ``[N, O, OH, OW]`` (``nchw_out``). ``padding`` is (top, left,
    bottom, right), padded positions hold ``pad_value`` (the input zero point). ``residual``: a
    blocked operand ``R`` added before the activation. ``w_taps`` > KW: the weights are packed with
    that many taps per kernel row (zeros past KW, :func:`pack_conv_weight`), and the padded input
    gets a slack row for a kernel that reads all of them."""
    n, cb, h, w, xi = x_shape
    kh, kw = kernel
    taps = max(w_taps or kw, kw)
    x = BLOCK
    ob = -(-channels_out // x)
    oh = out_size(h, kh, strides[0], dilation[0], padding[0], padding[2])
    ow = out_size(w, kw, strides[1], dilation[1], padding[1], padding[3])
    owp = -(-ow // reg_n) * reg_n
    a = te.placeholder(_s(x_shape), a_dtype, "A")
    half = kb // halves
    wshape = (ob, cb, kh, taps, xi // kb, x, kb) if halves == 1 else (ob, cb, kh, taps, xi // kb, halves, x, half)
    wt = te.placeholder(_s(wshape), "int8", "W")
    bias = te.placeholder(_s((ob * x,)), "int32", "bias")
    params = epilogue_inputs(epi, ob * x)
    xp, wp = _padded_input(a, padding, pad_value, a_dtype, 1 if taps > kw else 0)
    rc = te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", cb)), "rc")
    ry = te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", kh)), "ry")
    rx = te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", kw)), "rx")
    rf = te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", xi // kb)), "rf")
    rk = te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", half)), "rk")
    rh = te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", halves)), "rh") if halves > 1 else None
    sh, sw = strides
    dh, dw = dilation

    def body(b, o, y, z, v):
        col = _col(z * sw + rx * dw, wp, ow, owp)
        if rh is None:
            return (xp[b, rc, y * sh + ry * dh, col, rf * kb + rk].astype("int32")
                    * wt[o, rc, ry, rx, rf, v, rk].astype("int32"))
        return (xp[b, rc, y * sh + ry * dh, col, rf * kb + rh * half + rk].astype("int32")
                * wt[o, rc, ry, rx, rf, rh, v, rk].astype("int32"))

    axes = [rc, ry, rx, rf, rk] if rh is None else [rc, ry, rx, rf, rh, rk]
    acc = te.compute(_s((n, ob, oh, owp, x)), lambda *i: te.sum(body(*i), axis=axes), name="acc")
    f = _finish(acc, [a, wt, bias, *params], params, bias, epi, channels_out, x, nchw_out, (n, ob, oh, ow, x),
                residual, reg_n)
    return f.with_attr(GEOMETRY_ATTR, [int(sh), int(sw), int(dh), int(dw)])


def fold_conv_weight(wq: np.ndarray) -> np.ndarray:
    """``wq [O, C, KH, KW]`` → ``[O, KW * C, KH, 1]``: input channel ``kx * C + c`` is tap ``kx``
    of channel ``c`` (the folded input's byte order)."""
    o, c, kh, kw = wq.shape
    return np.ascontiguousarray(wq.transpose(0, 3, 1, 2).reshape(o, kw * c, kh, 1))


def conv2d_folded_int8_func(x_shape, channels_out: int, kernel: tuple[int, int], strides, padding,
                            dilation_h: int, xi: int, a_dtype: str, epi: Epilogue, pad_value: int, kb: int,
                            reg_n: int, nchw_out: bool, residual: Residual | None = None) -> tirx.PrimFunc:
    """A conv whose kernel rows are folded into the channels, on ``A [N, H, W * C]`` (the blocked
    layout with one block of all ``C`` channels, HWC, rows reshaped; ``x_shape`` is
    ``(N, H, W, C)``) with the weights ``fold_conv_weight`` packed
    as a ``(KH, 1)`` kernel of ``xi`` input bytes (:func:`pack_conv_weight`). ``pad`` holds the
    zero-point padded rows, each its pixels' channels in a row of bytes; output pixel ``ox`` of row
    ``oy`` reduces the ``xi`` contiguous bytes from ``pad[., oy * sh + ky * dh, ox * sw * C]`` per
    kernel row: its ``KW * C`` taps, and bytes past them that meet zero weights (the row has slack
    for the last pixel's). Output, epilogue and ``residual`` as :func:`conv2d_nchwc_int8_func`'s;
    the loop nest is that one's with unit ``rc`` and ``rx``, so the same schedule runs it. One
    vector per dot step (``halves`` = 1): AVX2's saturating two-vector step would add four image
    codes' products in int16 here (``KernelProvider.conv_fold`` takes the exact step instead)."""
    n, h, w, c = x_shape
    kh, kw = kernel
    sh, sw = strides
    pt, pl, pb, pr = padding
    x = BLOCK
    ob = -(-channels_out // x)
    oh = out_size(h, kh, sh, dilation_h, pt, pb)
    ow = out_size(w, kw, sw, 1, pl, pr)
    owp = -(-ow // reg_n) * reg_n
    length = -(-max((w + pl + pr) * c, (owp - 1) * sw * c + xi) // 64) * 64  # whole vectors for the pad stage
    i64 = lambda v: tirx.IntImm("int64", v)
    a = te.placeholder(_s((n, h, w * c)), a_dtype, "A")
    xp = te.compute(
        _s((n, h + pt + pb, length)),
        lambda b, y, j: tirx.if_then_else(
            tirx.all(y >= pt, y < h + pt, j >= pl * c, j < (pl + w) * c),
            a[b, tirx.min(tirx.max(y - pt, i64(0)), i64(h - 1)), tirx.min(tirx.max(j - pl * c, i64(0)), i64(w * c - 1))],
            tirx.const(pad_value, a_dtype)),
        name="pad")
    wt = te.placeholder(_s((ob, 1, kh, 1, xi // kb, x, kb)), "int8", "W")
    bias = te.placeholder(_s((ob * x,)), "int32", "bias")
    params = epilogue_inputs(epi, ob * x)
    unit = (i64(0), i64(1))
    rc, rx = te.reduce_axis(unit, "rc"), te.reduce_axis(unit, "rx")
    ry = te.reduce_axis((i64(0), i64(kh)), "ry")
    rf = te.reduce_axis((i64(0), i64(xi // kb)), "rf")
    rk = te.reduce_axis((i64(0), i64(kb)), "rk")

    def body(b, o, y, z, v):
        return (xp[b, y * sh + ry * dilation_h, z * (sw * c) + rf * kb + rk].astype("int32")
                * wt[o, rc, ry, rx, rf, v, rk].astype("int32"))

    acc = te.compute(_s((n, ob, oh, owp, x)), lambda *i: te.sum(body(*i), axis=[rc, ry, rx, rf, rk]), name="acc")
    f = _finish(acc, [a, wt, bias, *params], params, bias, epi, channels_out, x, nchw_out, (n, ob, oh, ow, x),
                residual, reg_n)
    return f.with_attr(GEOMETRY_ATTR, [int(sh), 1, int(dilation_h), 1])


def _finish(acc, inputs, params, bias, epi, channels, x, nchw_out, shape5, residual, reg_n) -> tirx.PrimFunc:
    r = residual.placeholder(shape5) if residual is not None else None
    out = _output(acc, bias, params, epi, channels, x, nchw_out, shape5, residual, r)
    args = inputs + ([r] if r is not None else []) + [out]
    return te.create_prim_func(args).with_attr(REG_N_ATTR, reg_n)


def depthwise_nchwc_int8_func(x_shape, channels: int, kernel: tuple[int, int], strides, padding, dilation,
                              a_dtype: str, epi: Epilogue, pad_value: int, reg_n: int,
                              nchw_out: bool, residual: Residual | None = None) -> tirx.PrimFunc:
    """Depthwise: ``A [N, C/x, H, W, x]`` x ``W [C/x, KH, KW, x]`` → int32 + bias → epilogue
    (``residual`` as in :func:`conv2d_nchwc_int8_func`)."""
    n, cb, h, w, x = x_shape
    kh, kw = kernel
    oh = out_size(h, kh, strides[0], dilation[0], padding[0], padding[2])
    ow = out_size(w, kw, strides[1], dilation[1], padding[1], padding[3])
    owp = -(-ow // reg_n) * reg_n
    a = te.placeholder(_s(x_shape), a_dtype, "A")
    wt = te.placeholder(_s((cb, kh, kw, x)), "int8", "W")
    bias = te.placeholder(_s((cb * x,)), "int32", "bias")
    params = epilogue_inputs(epi, cb * x)
    xp, wp = _padded_input(a, padding, pad_value, a_dtype)
    ry = te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", kh)), "ry")
    rx = te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", kw)), "rx")
    sh, sw = strides
    dh, dw = dilation
    acc = te.compute(
        _s((n, cb, oh, owp, x)),
        lambda b, c, y, z, v: te.sum(
            xp[b, c, y * sh + ry * dh, _col(z * sw + rx * dw, wp, ow, owp), v].astype("int32")
            * wt[c, ry, rx, v].astype("int32"), axis=[ry, rx]),
        name="acc")
    return _finish(acc, [a, wt, bias, *params], params, bias, epi, channels, x, nchw_out, (n, cb, oh, ow, x),
                   residual, reg_n)


def reference_conv(x: np.ndarray, wq: np.ndarray, strides, padding, dilation, pad_value: int,
                   halves: int = 1) -> np.ndarray:
    """The blocked int8 conv's int32 accumulator in NumPy, bit for bit: ``x [N, C, H, W]`` codes,
    ``wq [O, C, KH, KW]``, padded positions ``pad_value``. With ``halves`` = 2 (AVX2's saturating
    step, ``schedules/x86/int8.py``), each lane adds two exact pair sums of every 8-channel group in
    int16 with saturation: ``sat16(p01 + p45) + sat16(p23 + p67)``."""
    n, c, h, w = x.shape
    o, _, kh, kw = wq.shape
    pt, pl, pb, pr = padding
    xp = np.full((n, c, h + pt + pb, w + pl + pr), pad_value, np.int64)
    xp[:, :, pt:pt + h, pl:pl + w] = x
    oh = out_size(h, kh, strides[0], dilation[0], pt, pb)
    ow = out_size(w, kw, strides[1], dilation[1], pl, pr)
    cp = -(-c // 8) * 8
    cols = np.zeros((n, cp, kh, kw, oh, ow), np.int64)
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dilation[0], kx * dilation[1]
            cols[:, :c, ky, kx] = xp[:, :, y0:y0 + strides[0] * (oh - 1) + 1:strides[0],
                                     x0:x0 + strides[1] * (ow - 1) + 1:strides[1]]
    wp = np.zeros((o, cp, kh, kw), np.int64)
    wp[:, :c] = wq
    if halves == 1:
        return np.einsum("nckxhw,ockx->nohw", cols, wp).astype(np.int32)
    prod = np.einsum("nckxhw,ockx->nockxhw", cols, wp)  # [N, O, Cp, KH, KW, OH, OW]
    prod = prod.reshape(n, o, cp // 8, 2, 2, 2, kh, kw, oh, ow)  # channel = 8 g + 4 half + 2 pair + elem
    pairs = prod.sum(axis=5)  # [N, O, G, half, pair, KH, KW, OH, OW], exact
    sat = np.clip(pairs[:, :, :, 0] + pairs[:, :, :, 1], -32768, 32767)
    return sat.sum(axis=(2, 3, 4, 5)).astype(np.int32)


def quantize_blocked_func(shape, scale: float, zp: int, dtype: str, bits: int, block: int) -> tirx.PrimFunc:
    """float32 NCHW → int8/uint8 ``[N, C/block, H, W, block]`` in one pass (``quantize_func``'s
    arithmetic); padded channels hold the zero point."""
    from .qmath import qrange

    lo, hi = qrange(dtype, bits)
    n, c, h, w = shape
    cb = -(-c // block)
    x = te.placeholder(_s(shape), "float32", "x")
    f32 = lambda v: tirx.const(float(v), "float32")

    def q(b, j, y, z, v):
        ch = j * block + v
        val = tirx.round(x[b, tirx.min(ch, tirx.IntImm("int64", c - 1)), y, z] / f32(scale)) + f32(zp)
        val = tirx.max(tirx.min(val, f32(hi)), f32(lo))
        return tirx.if_then_else(ch < c, val, f32(zp)).astype(dtype)

    y = te.compute(_s((n, cb, h, w, block)), q, name="quantize")
    return te.create_prim_func([x, y])


def dequantize_blocked_func(shape, scale: float, zp: int, dtype: str, block: int) -> tirx.PrimFunc:
    """int8/uint8 ``[N, C/block, H, W, block]`` → float32 NCHW ``shape``."""
    n, c, h, w = shape
    cb = -(-c // block)
    q = te.placeholder(_s((n, cb, h, w, block)), dtype, "q")
    y = te.compute(_s(shape), lambda b, f, yy, z: tirx.const(scale, "float32") * (
        q[b, f // block, yy, z, f % block].astype("int32") - tirx.const(zp, "int32")).astype("float32"),
        name="dequantize")
    return te.create_prim_func([q, y])


def block_int_func(shape, dtype: str, block: int, fill: int) -> tirx.PrimFunc:
    """int8/uint8 (or float32) NCHW → ``[N, C/block, H, W, block]`` (padded channels ``fill``)."""
    n, c, h, w = shape
    cb = -(-c // block)
    q = te.placeholder(_s(shape), dtype, "q")
    y = te.compute(_s((n, cb, h, w, block)), lambda b, j, yy, z, v: tirx.if_then_else(
        j * block + v < c, q[b, tirx.min(j * block + v, tirx.IntImm("int64", c - 1)), yy, z],
        tirx.const(fill, dtype)), name="to_blocked")
    return te.create_prim_func([q, y])


__all__ = [
    "BLOCK",
    "Residual",
    "block_int_func",
    "conv2d_folded_int8_func",
    "conv2d_nchwc_int8_func",
    "depthwise_nchwc_int8_func",
    "dequantize_blocked_func",
    "fold_conv_weight",
    "in_block",
    "pack_conv_weight",
    "pack_depthwise_weight",
    "pad_channels",
    "quantize_blocked_func",
    "reference_conv",
    "row_view",
]
