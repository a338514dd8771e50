"""Winograd convolution F(m x m, 3 x 3) in the blocked channel layout (NCHW[x]c), LLVM CPU targets.

A stride-1 3x3 convolution computed tile by tile: each ``m x m`` output tile comes from an
``a x a`` input tile (``a = m + 2``) as ``Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`` (Lavin & Gray 2016):
``a²`` multiplies per tile and channel pair instead of ``9 m²``, 2.25x fewer for m = 4, 1.78x for
m = 2. Three stages, each a PrimFunc of its own, so the middle one is an ordinary kernel:

1. the input transform (:func:`winograd_input_func`, hand-written TIR): ``V[e] = (Bᵀ d B)[e]`` for
   every tile, position ``e`` of the ``a x a`` tile stored as channel-block group ``e`` of a
   ``[1, a²·C/x, 1, tiles, x]`` tensor;
2. the ``a²`` independent products ``M[e] = V[e] · U[e]`` (tiles x C times C x K): hwcomp's blocked
   convolution itself (``conv.conv2d_nchwc``), 1x1 with ``groups = a²``, so
   :class:`~.conv.BlockedConv` schedules it (register tile of tiles x output-channel block,
   broadcast FMAs) and the tuner's conv knobs apply; ``U = G g Gᵀ`` is packed at compile time
   (:func:`pack_winograd_weight`);
3. the output transform (:func:`winograd_output`, a TE compute :class:`WinogradTransform`
   schedules): ``Y = Aᵀ M A`` per tile, then whatever ``FuseOps`` put after the convolution (bias,
   activation, residual add) before the store.

Both transforms use the matrices' nonzero entries only, as exact constants, nested
(``Σ_a B[a,ε] Σ_b B[b,ν] d[a,b]``): the separable cost once the tile's positions are unrolled.

The layout pass chooses where (:func:`use_winograd`). Numerics: TVM's interpolation points
(0, ±1, 1/2, -2 for m = 4) scale some terms by up to 4 before they cancel; in fp32 a layer differs
from the direct sum by ~2-4e-6 of its output scale (ResNet-50 end to end: cosine 0.99999999 to
PyTorch, max error 1.8e-4 of the output scale against 1.3e-4 direct).
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te, tirx

from .rules import (
    _broadcasts_result,
    _CPURule,
    _is_spatial,
    annotated_block,
    inline_epilogues,
    schedule_root_stages,
)

#: Block annotation naming the output transform; its value is the tile ``m`` ("4").
WINOGRAD_ATTR = "hwcomp.winograd"


def winograd_matrices(m: int, r: int = 3, integer: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``A [a, m]``, ``B [a, a]``, ``G [a, r]`` (float64) for F(m x m, r x r), ``a = m + r - 1``:
    ``y = Aᵀ [(G g) ⊙ (Bᵀ d)]``. Cook-Toom with TVM's interpolation points (0, ±1, 1/2, -2 for
    m = 4: the smaller fp32 error), or with ``integer`` Lavin's (0, ±1, ±2: integer ``A`` and ``B``,
    so integer codes transform exactly; the int8 Winograd's)."""
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    n = m + r - 2
    points = [0.0] + [s * float(k) for k in range(1, n) for s in (1, -1)][: n - 1] if integer else \
        _interpolation_points(n)
    a, b, g = _cook_toom_convolution(points, m, r)
    return np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(g, np.float64)


def pack_winograd_weight(w: np.ndarray, m: int, block_in: int, block_out: int) -> np.ndarray:
    """OIHW 3x3 → ``U = G g Gᵀ`` packed as the grouped 1x1 kernel ``[a²·O/xo, I/xi, 1, 1, xi, xo]``
    (group ``e`` = position ``e`` of the ``a x a`` tile), O and I zero-padded to whole blocks."""
    o, i, kh, kw = w.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"pack_winograd_weight: a 3x3 kernel, got {kh}x{kw}")
    _, _, g = winograd_matrices(m)
    alpha = m + 2
    u = np.einsum("ak,oikl,bl->abio", g, w.astype(np.float64), g)  # [a, a, I, O]
    op, ip = -(-o // block_out) * block_out, -(-i // block_in) * block_in
    u = np.pad(u, ((0, 0), (0, 0), (0, ip - i), (0, op - o)))
    u = u.reshape(alpha * alpha, ip // block_in, block_in, op // block_out, block_out)
    u = u.transpose(0, 3, 1, 2, 4)  # [e, O/xo, I/xi, xi, xo]
    return np.ascontiguousarray(
        u.reshape(alpha * alpha * (op // block_out), ip // block_in, 1, 1, block_in, block_out).astype(np.float32))


def tiles(oh: int, ow: int, m: int) -> tuple[int, int]:
    """Tile rows and columns of ``m x m`` output tiles covering ``oh x ow`` (the last ones partial)."""
    return -(-oh // m), -(-ow // m)


def _combine(coeffs: list[float], terms: list) -> tirx.PrimExpr:
    """``Σ coeffs[k]·terms[k]`` over the nonzero coefficients, ±1 without a multiply."""
    out = None
    for c, t in zip(coeffs, terms):
        if c == 0:
            continue
        v = t if c == 1 else (-t if c == -1 else t * tirx.const(float(c), "float32"))
        out = v if out is None else out + v
    return out if out is not None else tirx.const(0.0, "float32")


def _select(index, branches: list) -> tirx.PrimExpr:
    """``branches[index]`` for an index the schedule unrolls (the Select folds to one branch).
    Fine for the output transform's m² small branches (0.4 s to compile a layer); the input
    transform's a² = 36 larger ones took 4 s, hence its hand-written TIR."""
    out = branches[-1]
    for k in range(len(branches) - 2, -1, -1):
        out = tirx.Select(index == k, branches[k], out)
    return out


def _lin(coeffs, terms: list[str], dtype: str = "float32") -> str:
    """``Σ coeffs[k]·terms[k]`` as TVMScript over the nonzero coefficients, ±1 without a multiply
    (``dtype`` integer: the coefficients must be integers)."""
    out = ""
    for c, t in zip(coeffs, terms):
        if c == 0:
            continue
        lit = abs(float(c)) if dtype.startswith("float") else int(abs(c))
        mag = "" if abs(c) == 1 else f" * T.{dtype}({lit!r})"
        if not out:
            out = ("-" if c < 0 else "") + t + mag
        else:
            out += (" - " if c < 0 else " + ") + t + mag
    return out or f"T.{dtype}(0)"


def winograd_input_source(shape: tuple[int, ...], m: int, padding, in_dtype: str = "float32",
                          dtype: str = "float32", zero_point: int = 0) -> str:
    """TVMScript of the input transform (:func:`winograd_input_func`), already scheduled: tasks of
    (channel block, image, tile row); per tile the ``a x a`` input tile is loaded once into
    registers (zeros outside the image: one branch per tile for the interior ones), ``Bᵀ d`` then
    ``(Bᵀ d) B`` are written out with the matrix's nonzero entries only, each line a vector over
    the channel block. Written by hand rather than as a TE compute: the same arithmetic as one
    expression selected per position took 4 s to compile per layer, and this takes ~0.1 s.

    ``in_dtype`` / ``dtype``: the input's and the transform's types; integer codes (the int8
    Winograd, ``hwcomp.quantize.int8_winograd``) are read as ``code - zero_point`` in ``dtype``
    (``Bᵀ`` is integer, so the transform is exact), the padding is the zero point (0 after it)."""
    n, cb, h, w, x = shape
    pt, pl, pb, pr = padding
    oh, ow = h + pt + pb - 2, w + pl + pr - 2
    th, tw = tiles(oh, ow, m)
    alpha = m + 2
    _, bmat, _ = winograd_matrices(m, integer=not dtype.startswith("float"))
    p_total = n * th * tw
    ind = " " * 16
    load = "data[b, c, y0 + i, x0 + j, v]"
    if in_dtype != dtype:
        load = f'T.Cast("{dtype}", {load})'
    if zero_point:
        load = f"{load} - T.{dtype}({int(zero_point)})"
    lines = [
        "@T.prim_func(s_tir=True)",
        (f'def winograd_input(data: T.Buffer(({n}, {cb}, {h}, {w}, {x}), "{in_dtype}"), '
         f'out: T.Buffer((1, {alpha * alpha * cb}, 1, {p_total}, {x}), "{dtype}")):'),
        '    T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})',
        '    with T.sblock("root"):',  # a root block, as TVM's pattern analysis expects
        f"        for task in T.parallel({cb * n * th}):",
        f'            d = T.alloc_buffer(({alpha}, {alpha}, {x}), "{dtype}", scope="local")',
        f'            r = T.alloc_buffer(({alpha}, {alpha}, {x}), "{dtype}", scope="local")',
        f"            c = task // {n * th}",
        f"            b = task % {n * th} // {th}",
        f"            ty = task % {th}",
        f"            for tx in range({tw}):",
        f"                y0 = ty * {m} - {pt}",
        f"                x0 = tx * {m} - {pl}",
        f"                if 0 <= y0 and y0 + {alpha} <= {h} and 0 <= x0 and x0 + {alpha} <= {w}:",
        f"                    for i in T.unroll({alpha}):",
        f"                        for j in T.unroll({alpha}):",
        f"                            for v in T.vectorized({x}):",
        f"                                d[i, j, v] = {load}",
        "                else:",
        f"                    for i in T.unroll({alpha}):",
        f"                        for j in T.unroll({alpha}):",
        f"                            if 0 <= y0 + i and y0 + i < {h} and 0 <= x0 + j and x0 + j < {w}:",
        f"                                for v in T.vectorized({x}):",
        f"                                    d[i, j, v] = {load}",
        "                            else:",
        f"                                for v in T.vectorized({x}):",
        f"                                    d[i, j, v] = T.{dtype}(0)",
    ]
    # rows: r[i, nu] = Σ_j B[j, nu] d[i, j]; then out[eps, nu] = Σ_i B[i, eps] r[i, nu]
    for i in range(alpha):
        for nu in range(alpha):
            lines += [f"{ind}for v in T.vectorized({x}):",
                      f"{ind}    r[{i}, {nu}, v] = {_lin(bmat[:, nu], [f'd[{i}, {j}, v]' for j in range(alpha)], dtype)}"]
    for eps in range(alpha):
        for nu in range(alpha):
            e = eps * alpha + nu
            lines += [f"{ind}for v in T.vectorized({x}):",
                      (f"{ind}    out[0, {e * cb} + c, 0, (b * {th} + ty) * {tw} + tx, v] = "
                       f"{_lin(bmat[:, eps], [f'r[{i}, {nu}, v]' for i in range(alpha)], dtype)}")]
    return "\n".join(lines)


def winograd_input_shape(shape, m: int, padding) -> list[int]:
    """The input transform's result shape ``[1, a²·C/x, 1, N·th·tw, x]`` for ``data`` of ``shape``."""
    n, cb, h, w, x = (int(d) for d in shape)
    th, tw = tiles(h + padding[0] + padding[2] - 2, w + padding[1] + padding[3] - 2, m)
    return [1, (m + 2) ** 2 * cb, 1, n * th * tw, x]


def winograd_input_func(shape: tuple[int, ...], m: int, padding, in_dtype: str = "float32",
                        dtype: str = "float32", zero_point: int = 0) -> tirx.PrimFunc:
    """``data [N, C/x, H, W, x]`` (padding (top, left, bottom, right) of a 3x3 stride-1 conv) →
    ``V [1, a²·C/x, 1, N·th·tw, x]``: channel block ``e·C/x + c`` holds position ``e`` of tile
    ``(n, ty, tx)``'s ``Bᵀ d B``. Opaque to fusion: nothing is computed into it. Integer codes:
    see :func:`winograd_input_source`."""
    import tvm

    func = tvm.script.from_source(winograd_input_source(tuple(int(d) for d in shape), m, tuple(padding),
                                                        in_dtype, dtype, zero_point))
    return func.with_attr("op_pattern", 8)


def winograd_output(prod: te.Tensor, m: int, n: int, oh: int, ow: int) -> te.Tensor:
    """``M [1, a²·K/x, 1, N·th·tw, x]`` (the per-position products) → ``Y [N, K/x, OH, OW, x]``."""
    _, gk, _, _, x = (int(d) for d in prod.shape)
    alpha = m + 2
    kb = gk // (alpha * alpha)
    th, tw = tiles(oh, ow, m)
    amat, _, _ = winograd_matrices(m)

    def value(b_, k, y, xx, v):
        p = b_ * th * tw + y // m * tw + xx // m
        yi, xi = y % m, xx % m
        branches = []
        for i in range(m):
            for j in range(m):
                rows = [_combine(list(amat[:, j]), [prod[0, (a * alpha + bb) * kb + k, 0, p, v] for bb in range(alpha)])
                        for a in range(alpha)]
                branches.append(_combine(list(amat[:, i]), rows))
        return _select(yi * m + xi, branches)

    shape = [tirx.IntImm("int64", d) for d in (n, kb, oh, ow, x)]
    return te.compute(shape, value, name="winograd_output", attrs={WINOGRAD_ATTR: str(m)})


def winograd_output_func(prod_shape: tuple[int, ...], m: int, n: int, oh: int, ow: int) -> tirx.PrimFunc:
    """:func:`winograd_output` as a PrimFunc that fuses like a convolution (``op_pattern``
    out-element-wise fusable): the element-wise ops after it join it, and it joins nothing after
    (not the next layer's pooling or input transform)."""
    # 64-bit shapes, as Relax's own ``emit_te`` makes them (FuseTIR matches the buffers by type)
    prod = te.placeholder([tirx.IntImm("int64", int(d)) for d in prod_shape], "float32", name="prod")
    return te.create_prim_func([prod, winograd_output(prod, m, n, oh, ow)]).with_attr("op_pattern", 4)


def use_winograd(channels_in: int, channels_out: int, oh: int, ow: int, block: int) -> int:
    """The tile ``m`` of F(m, 3) for a stride-1, undilated 3x3 convolution of ``channels_in`` (a
    blocked input of ``block`` lanes), 0 for the direct one: 4 where that makes at least 16 tiles,
    else 2 where that does, else direct (too few tiles to amortize weights 2-4x the direct ones').

    Measured alone against the direct blocked conv (AMD Zen 4, AVX-512, 2 threads, 3x3 + ReLU):
    64 -> 64 at 56x56 1.36 -> 0.58 ms, 256 -> 256 at 14x14 1.09 -> 0.54 ms; in ResNet-18 the
    products of F(4, 3) run 3.7-4x faster than the direct convs at 56x56 and 28x28, 2.3x at 14x14,
    and F(2, 3) 1.2x at 7x7 (512 channels: its 16.8 MB of transformed weights stream from memory).
    Thin layers (fewer input or output channels than a block) stay direct."""
    if channels_in < block or channels_out < block:
        return 0
    for m in (4, 2):
        th, tw = tiles(oh, ow, m)
        if th * tw >= 16:
            return m
    return 0


class WinogradTransform(_CPURule):
    """Schedule a function around the output transform's :data:`WINOGRAD_ATTR` block: tasks of
    (image, output-channel block, tile row), each tile's ``m x m`` pixels unrolled so the
    transform is straight-line code LLVM shares the inner sums of, the channel block vectorized,
    the convolution's epilogue (bias, activation, residual add) applied before the store."""

    def _apply(self, func, target):
        sch = s_tir.Schedule(func)
        blocks, main = annotated_block(sch, WINOGRAD_ATTR)
        if main is None:
            return None
        m = int(sch.get(main).annotations[WINOGRAD_ATTR])
        # Intermediate stages of the epilogue inline into their consumers (a squeeze-and-excitation
        # gate's add before its broadcast multiply, which stays a stage of its own below).
        for b in blocks:
            if b == main or not _is_spatial(sch, b) or not sch.get_consumers(b):
                continue
            if "if_then_else" in str(sch.get(b).body):
                continue  # padding: a stage of its own
            try:
                sch.compute_inline(b)
            except s_tir.ScheduleError:
                pass
        n, k, y, xx, v = sch.get_loops(main)
        ty, yi = sch.split(y, [None, m])
        tx, xi = sch.split(xx, [None, m])
        sch.reorder(n, k, ty, tx, yi, xi, v)
        # Each pixel goes to registers first and the epilogue reads it there: inlined straight into the
        # transform, an epilogue that uses its input several times (SiLU's polynomial) copied the
        # whole per-pixel selection each time (MobileViT-S compiled in 52 s instead of 13).
        broadcast = _broadcasts_result(sch, main)
        cw = sch.cache_write(main, 0, "local")
        sch.reverse_compute_at(cw, xi, preserve_unit_loops=True)
        if not broadcast:
            inline_epilogues(sch, cw)
        sch.unroll(yi)
        sch.unroll(xi)
        sch.vectorize(v)
        sch.vectorize(sch.get_loops(cw)[-1])
        par = sch.fuse(n, k, ty)
        sch.parallel(par)
        schedule_root_stages(sch, par, self.vector_bits)
        return sch
