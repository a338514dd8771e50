"""Window reductions (max / average pooling) for LLVM CPU targets, in NCHW and NCHW[x]c, any dtype.

Legalized pooling is a padding stage (``pad_temp``), one reduction block that reads that one input
over a small window (``x[.., oh * s + ry, ow * s + rx, ..]``: every reduction variable slides with
an output axis) and, for averages, a divide. Before this rule ``TiledReduction`` took them for a
matmul: a register tile over a fused (channel, row) axis with the fused index divided back per
element, strided gathers, and the padding materialized at the root by a scalar loop over the whole
padded tensor. Measured on 2 Zen 3 cores (kernel profile, 3x3/2 max-pool over 64x112x112 fp32):
NCHW 2.25 → 0.19 ms, NCHW16c 0.33 → 0.06 ms (ResNet-18's pool: 0.41 → 0.09 ms).

:class:`WindowReduction` runs the output rows in parallel and each row left to right, the reduction
loops outside the innermost (vector) loop and a tile of outputs accumulating in a ``local`` buffer:

* **lane mode** (NCHW[x]c, NHWC: the output's last axis is a channel the window does not touch):
  ``par(n, c-block, oh) → ow-tile → ry, rx → ow (unrolled) → lanes (vector)``. The padding predicate
  depends on the pixel and the window position only, a scalar for the lane vector, so the padding
  is inlined into the loads (no padded copy at all).
* **row mode** (NCHW: the last axis is ``ow`` itself): ``par(n, c, oh) → ow-tile → ry, rx → ow-vectors
  (unrolled) → ow (vector)``. A predicate on ``ow`` would scalarize the vector loop, so the rows one
  output row reads are staged under the parallel loop into a small local buffer (``decompose_padding``:
  a fill of the pad value, then an unconditional copy); with a stride ``s`` along the row the buffer
  is stored deinterleaved, ``w → (w % s, w // s)``, so every window load is a contiguous vector
  instead of a per-lane gather (see :meth:`WindowReduction._stage_rows`).

The tile is written back once with the epilogue (average's divide, a fused activation or add)
applied on the way (:func:`inline_epilogues`). The reduction block is annotated :data:`WINDOW_ATTR`.

Not matched: a reduction reading a second operand (matmul, convolution: weights), and reductions
whose reduced variables do not slide with an output axis (global means, softmax / norm sums): those
stay with ``TiledReduction`` / ``RowReduction``.
"""

from __future__ import annotations

from tvm import ir, s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block

from .rules import (
    _broadcasts_result,
    _const_int,
    _CPURule,
    _has_conditional,
    _is_reduction,
    _is_spatial,
    _lanes,
    _vars_in,
    inline_epilogues,
    schedule_root_stages,
    spatial_then_reduction,
)

#: Block annotation on the reduction block scheduled by :class:`WindowReduction`.
WINDOW_ATTR = "hwcomp.window_reduction"

_COMBINERS = (tirx.Max, tirx.Min, tirx.Add)

#: TVM 0.27 puts a constant-size allocation under a parallel loop on the worker's stack only when it
#: is smaller than this (``runtime::kMaxStackAlloca``) *and* has storage scope "global"; a "local"
#: one, or a larger one, is a ``TVMBackendAllocWorkspace`` call per parallel iteration (per output
#: row here), which measured as much as the pooling itself for small rows. The accumulator tile and
#: the staged rows are therefore "global"-scope buffers allocated inside the parallel loop (one per
#: thread, as "local" would be), sized under this bound.
_STACK_BYTES = 1024
_SCOPE = "global"


def _loads(expr) -> list:
    """BufferLoads in ``expr`` (TVM 0.27 has no Python expression visitor: walk the known nodes)."""
    out = []
    todo = [expr]
    while todo:
        e = todo.pop()
        if isinstance(e, ir.TensorLoad):
            out.append(e)
            todo.extend(e.indices)
        elif isinstance(e, (tirx.Max, tirx.Min, tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.FloorDiv,
                            tirx.FloorMod, tirx.EQ, tirx.NE, tirx.LT, tirx.LE, tirx.GT, tirx.GE,
                            tirx.And, tirx.Or)):
            todo += [e.a, e.b]
        elif isinstance(e, tirx.Cast):
            todo.append(e.value)
        elif isinstance(e, tirx.Not):
            todo.append(e.a)
        elif isinstance(e, tirx.Select):
            todo += [e.condition, e.true_value, e.false_value]
        elif isinstance(e, ir.Call):
            todo += list(e.args)
        elif isinstance(e, (tirx.IntImm, tirx.FloatImm, tirx.Var)):
            pass
        else:  # ValueError: _CPURule.apply reads it as "not this rule's function"
            raise ValueError(f"unexpected expression {type(e).__name__}")  # noqa: TRY004
    return out


def _window_input(sch, main):
    """The one buffer the reduction block ``main`` reads over a window, or None where the block is
    not a window reduction: the update must be ``acc = max|min|+(acc, f(x[...]))`` with a single
    input buffer ``x`` (no second operand: not a matmul or convolution), and every reduction
    variable must appear in an index of ``x`` together with a spatial variable of the output (the
    window slides with the output; a global mean's reduced axes index ``x`` alone)."""
    stmt = sch.get(main)
    body = stmt.body
    if not isinstance(body, tirx.BufferStore) or len(stmt.writes) != 1:
        return None
    out = stmt.writes[0].source
    value = body.value
    if not isinstance(value, _COMBINERS):
        return None

    def is_acc(e):
        return isinstance(e, ir.TensorLoad) and e.source.same_as(out)

    acc, rhs = (value.a, value.b) if is_acc(value.a) else (value.b, value.a)
    if not is_acc(acc):
        return None
    loads = _loads(rhs)
    if not loads or any(is_acc(ld) for ld in loads):
        return None
    load = loads[0]
    if any(not ld.source.same_as(load.source) for ld in loads[1:]):
        return None  # a second operand: matmul, convolution
    if len({str(list(ld.indices)) for ld in loads}) != 1:
        return None
    ivars = list(stmt.iter_vars)
    spatial = {iv.var for iv in ivars if iv.iter_type == tirx.IterVar.DataPar}
    reduce = [iv.var for iv in ivars if iv.iter_type == tirx.IterVar.CommReduce]
    if not reduce or len(reduce) + len(spatial) != len(ivars):
        return None
    out_vars = set()
    for idx in body.indices:
        out_vars |= set(_vars_in(idx))
    for r in reduce:
        if not any(r in (vs := set(_vars_in(idx))) and vs & spatial & out_vars for idx in load.indices):
            return None
    return load


def _stride(index, var) -> int:
    from tvm.sym.pattern import detect_linear_equation

    coef = detect_linear_equation(index, [var])
    return _const_int(coef[0]) or 0 if len(coef) == 2 else 0


def _deinterleave(ndim: int, stride: int):
    """Index map splitting the last axis by its residue modulo ``stride``: ``w → (w % s, w // s)``."""
    from tvm.tirx import IndexMap

    def f(*idx):
        return (*idx[:-1], idx[-1] % stride, idx[-1] // stride)

    return IndexMap.from_func(f, ndim=ndim)


def _window(index, ivars, extents) -> int:
    """Extent of the reduction variables in ``index`` (the window's width along that axis)."""
    used = set(_vars_in(index))
    ext = 1
    for iv, e in zip(ivars, extents):
        if iv.iter_type == tirx.IterVar.CommReduce and iv.var in used:
            ext *= e
    return ext


def _window_all(ivars, extents) -> int:
    ext = 1
    for iv, e in zip(ivars, extents):
        if iv.iter_type == tirx.IterVar.CommReduce:
            ext *= e
    return ext


def _read_index(sch, block, load) -> int:
    for k, r in enumerate(sch.get(block).reads):
        if r.source.same_as(load.source):
            return k
    raise ValueError("window input not among the block's reads")


def _fits_stack(unit_bytes: int) -> int:
    """How many ``unit_bytes`` rows an accumulator tile may hold and stay under :data:`_STACK_BYTES`
    (AVX-512's 16 accumulator vectors are exactly 1 KiB: one row fewer)."""
    return max((_STACK_BYTES - 1) // max(unit_bytes, 1), 1)


def _tile(ext: int, limit: int) -> int:
    """Largest divisor of ``ext`` not above ``limit``."""
    for t in range(min(ext, max(limit, 1)), 0, -1):
        if ext % t == 0:
            return t
    return 1


class WindowReduction(_CPURule):
    """Max / average pooling (window reductions over one input), NCHW and NCHW[x]c."""

    def __init__(self, vector_bits: int, registers: int = 16):
        super().__init__(vector_bits)
        self.registers = registers

    def _apply(self, func, target):
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(get_root_block(sch))
        reductions = [b for b in blocks if _is_reduction(sch, b)]
        if len(reductions) != 1 or not all(_is_spatial(sch, b) for b in blocks if b not in reductions):
            return None
        main = reductions[0]
        if _broadcasts_result(sch, main):
            return None
        # Element-wise prologues (an activation before the pool) fold into the padding or the loads.
        for b in blocks:
            if b != main and _is_spatial(sch, b) and sch.get_consumers(b) and not _has_conditional(sch, b):
                try:
                    sch.compute_inline(b)
                except s_tir.ScheduleError:
                    pass
        pads = [b for b in sch.get_producers(main) if _is_spatial(sch, b)]
        if len(pads) > 1:
            return None
        pad = pads[0] if pads else None
        # Judge the window on the padded buffer: inline nothing more before the match.
        load = _window_input(sch, main)
        if load is None:
            return None

        stmt = sch.get(main)
        loops = sch.get_loops(main)
        ivars = list(stmt.iter_vars)
        kinds = spatial_then_reduction(sch, main)
        if kinds is None or kinds.count("S") < 2:
            return None
        n_s = kinds.count("S")
        extents = [_const_int(iv.dom.extent) for iv in ivars]
        if any(e is None for e in extents):
            return None
        var_pos = {iv.var: p for p, iv in enumerate(ivars)}
        out_idx = stmt.writes[0].region
        j = var_pos.get(out_idx[-1].min)
        if j is None or kinds[j] != "S":
            return None
        # spatial axes that slide with a window
        windowed = set()
        for idx in load.indices:
            vs = [var_pos[v] for v in _vars_in(idx) if v in var_pos]
            if any(kinds[p] == "R" for p in vs):
                windowed |= {p for p in vs if kinds[p] == "S"}
        dtype_bits = stmt.writes[0].source.dtype.bits
        lanes = _lanes(self.vector_bits, dtype_bits)
        budget = max(self.registers // 2, 2)  # accumulator vectors in a tile
        r_loops = list(loops[n_s:])

        stride = _stride(load.indices[-1], ivars[j].var) if j in windowed else 1
        kw = _window(load.indices[-1], ivars, extents)
        stage_per_tile = False
        if j in windowed:
            # row mode (NCHW): the output row is the vector
            ext = extents[j]
            vec = ext if ext <= 2 * lanes else next(
                (v for v in (2 * lanes, lanes, lanes // 2, lanes // 4) if v >= 4 and ext % v == 0),
                _tile(ext, 2 * lanes))
            # several vectors per tile: independent accumulation chains (a float add's latency:
            # one vector per tile ran a 3x3 average 1.5x slower)
            u = _tile(ext // vec, min(budget, _fits_stack(vec * dtype_bits // 8)) if vec > 1 else 1)
            if pad is not None or stride > 1:
                # The rows are staged (below) per output row, or per tile where the row's stage is
                # over the stack bound and a tile of >= 2 vectors fits under it.
                rows = _window_all(ivars, extents) // kw

                def stage_bytes(n):
                    return rows * stride * -(-(stride * (n - 1) + kw) // stride) * dtype_bits // 8

                if stage_bytes(ext) >= _STACK_BYTES:
                    fit = next((d for d in range(u, 1, -1) if (ext // vec) % d == 0
                                and stage_bytes(d * vec) < _STACK_BYTES), 1)
                    if fit >= 2:
                        u, stage_per_tile = fit, True
            outer = [loops[p] for p in range(n_s) if p != j]
            j0, ju, j1 = sch.split(loops[j], [None, u, vec])
            sch.reorder(*outer, j0, *r_loops, ju, j1)
            if u > 1:
                sch.unroll(ju)
            tile_loop, vec_loop = j0, (j1 if vec > 1 else None)
        else:
            # lane mode (NCHW[x]c): the channel lanes are the vector, a tile of pixels along the row
            # (the last windowed axis before the lanes) accumulates in registers
            cand = [p for p in windowed if p < j]
            if not cand:
                return None
            w = max(cand)
            ext_c = extents[j]
            c_loops = [loops[j]]
            if ext_c > 2 * lanes and ext_c % lanes == 0:  # wide channels (NHWC): lane groups outside
                c_loops = list(sch.split(loops[j], [None, _tile(ext_c, 2 * lanes)]))
                ext_c = _const_int(sch.get(c_loops[-1]).extent)
            t = _tile(extents[w], min(max(budget // -(-ext_c // lanes), 1), _fits_stack(ext_c * dtype_bits // 8)))
            outer = [loops[p] for p in range(n_s) if p not in (w, j)]
            w0, w1 = sch.split(loops[w], [None, t])
            sch.reorder(*outer, w0, *c_loops[:-1], *r_loops, w1, c_loops[-1])
            tile_loop, vec_loop = (c_loops[0] if len(c_loops) > 1 else w0), c_loops[-1]
            if t > 1:
                sch.unroll(w1)
        if not outer:
            return None

        sch.annotate(main, WINDOW_ATTR, 1)
        cw = sch.cache_write(main, 0, _SCOPE)
        sch.reverse_compute_at(cw, tile_loop, preserve_unit_loops=True)
        inline_epilogues(sch, cw)
        if vec_loop is not None:
            sch.vectorize(vec_loop)
        cw_loops = sch.get_loops(cw)
        at = [sch.get(lp).same_as(sch.get(tile_loop)) for lp in cw_loops].index(True)
        epi = cw_loops[at + 1:]
        if epi:
            sch.vectorize(epi[-1])
            if len(epi) > 1:
                sch.unroll(epi[-2])
        par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        sch.parallel(par)
        sch.decompose_reduction(main, r_loops[0])

        if pad is not None and j not in windowed:
            try:
                sch.compute_inline(pad)  # the predicate is per pixel: a scalar for the lane vector
                pad = None
            except s_tir.ScheduleError:
                pass
        if pad is None and j in windowed and stride > 1:
            # no padding stage, but a strided window: stage the rows it reads, deinterleaved, all
            # the same (2x2/2 over 64x112x112: 0.09 ms staged, 0.43 ms with per-lane gathers)
            pad = sch.cache_read(main, _read_index(sch, main, load), _SCOPE)
        if pad is not None:
            self._stage_rows(sch, pad, tile_loop if stage_per_tile else par, stride)
        schedule_root_stages(sch, par, self.vector_bits)
        return sch

    def _stage_rows(self, sch, stage, at, stride: int) -> None:
        """Compute the input rows one output row (or one tile of it) reads (``stage``: the padding, or
        a copy) under the loop ``at`` into a small per-thread buffer: a fill of the pad value and an
        unconditional copy of the in-bounds part (``decompose_padding``). With a window stride ``s`` > 1 along the
        vectorized row, the buffer is stored deinterleaved (``w → (w % s, w // s)``) so the window's
        loads are contiguous vectors; the copy loop then reads ``x[s*q + p]`` for each residue ``p``,
        which is left scalar for LLVM's loop vectorizer (it emits wide loads and shuffles for such
        interleaved groups; TVM's own vectorizer would gather lane by lane)."""
        try:
            sch.compute_at(stage, at, preserve_unit_loops=True)
        except s_tir.ScheduleError:
            return  # left at the root: schedule_root_stages
        sch.set_scope(stage, 0, _SCOPE)
        depth = len(sch.get_loops(stage)) - len(sch.get(stage).iter_vars)  # loops down to ``at``
        lanes = _lanes(self.vector_bits, sch.get(stage).writes[0].source.dtype.bits)
        fill = None
        if _has_conditional(sch, stage):
            below = sch.get_loops(stage)[depth:]
            try:
                fill = sch.decompose_padding(stage, below[0])
            except (s_tir.ScheduleError, IndexError):
                fill = None
        deint = False
        if stride > 1 and not _has_conditional(sch, stage):
            nd = len(sch.get(stage).writes[0].region)
            try:
                sch.transform_layout(stage, ("write", 0), _deinterleave(nd, stride), assume_injective_transform=True)
                deint = True
            except Exception:  # noqa: BLE001 - TVM raises assorted errors (a row not divisible by s)
                deint = False
        for b in (fill, stage):
            if b is None:
                continue
            bl = sch.get_loops(b)[depth:]
            if not bl:
                continue
            inner = bl[-1]
            ext = _const_int(sch.get(inner).extent)
            if ext is None:
                continue
            if deint:
                q, p = sch.split(inner, [None, stride])
                sch.reorder(p, q)
                sch.unroll(p)
                continue
            if ext <= 4 * lanes:
                sch.vectorize(inner)
            elif ext % lanes == 0:
                _, v = sch.split(inner, [None, lanes])
                sch.vectorize(v)
