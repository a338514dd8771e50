"""Default (untuned) schedules for LLVM CPU targets, x86 and ARM alike.

TVM's default CPU pipeline schedules nothing: a legalized matmul runs as a scalar triple loop, about
100x slower than PyTorch. These rules give every fused PrimFunc a reasonable schedule without
tuning. They are dlight ``ScheduleRule`` objects so they compose with dlight's own CPU rules.

``TiledReduction`` handles a function with one reduction block (matmul, batch matmul, dense, conv,
pooling) and injective prologues/epilogues (bias, activation, residual add): a register tile of
``MR`` rows by ``NR`` vector lanes is accumulated in a local buffer while the reduction runs, the
epilogue is applied to the tile while it is still in registers, and the outer tile loops run in
parallel. The column-panel loop sits outside the row loop so a ``K x NR`` panel of the weight
stays in cache while every row tile reuses it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from .prefetch import MAX_ROW_TILES, with_panel_prefetch, with_row_prefetch

#: Row tiles outermost (``TiledReduction._rows_outer``) above this many row tiles, for a column
#: operand (the weight) of at most :func:`rows_outer_max_bytes`.
ROWS_OUTER_MIN_TILES = 64
ROWS_OUTER_MAX_BYTES = 256 * 1024


def rows_outer_max_bytes(l2_bytes: int | None) -> int:
    """The largest weight that goes with row tiles outermost: a third of one core's L2, where the
    target says how large that is (each row tile sweeps the whole weight, which must stay in L2),
    else :data:`ROWS_OUTER_MAX_BYTES`. Measured on an AVX-512 Xeon (2 MB L2), weights cold:
    590 KB weights 1500x384x384 1.41 -> 1.29 ms, 784x192x768 0.68 -> 0.65, 784x768x192 0.70 -> 0.68;
    2.3 MB (1500x384x1536) 1.3x slower. A Zen 3's 512 KB L2 gives 170 KB."""
    return l2_bytes // 3 if l2_bytes else ROWS_OUTER_MAX_BYTES

# Block annotation: a stage TiledReduction keeps instead of inlining into the reduction's loads.
MATERIALIZE = "hwcomp.materialize"


@dataclasses.dataclass(frozen=True)
class TileKnobs:
    """Tunable knobs of :class:`TiledReduction` (the tuner searches these).

    ``mr``/``nr``: register tile rows and columns (``nr`` in elements, a multiple of the vector
    lanes); ``kc``: reduction split for cache blocking (0 = none); ``panel_outer``: iterate column
    panels outside row tiles (weight panel reuse) rather than the reverse.
    """

    mr: int = 4
    nr_vectors: int = 2
    kc: int = 0
    panel_outer: bool = True


def _lanes(vector_bits: int, dtype_bits: int) -> int:
    return max(vector_bits // dtype_bits, 1)


def _const_int(x) -> int | None:
    return int(x.value) if isinstance(x, tirx.IntImm) else None


def _has_conditional(sch: s_tir.Schedule, block) -> bool:
    # TVM 0.27 exposes no Python visitor for TIR statements; the printed body is exact enough.
    return "if_then_else" in str(sch.get(block).body)


def annotated_block(sch: s_tir.Schedule, attr: str) -> tuple[list, Any]:
    """The root's child blocks, and the one carrying annotation ``attr`` (None unless exactly one):
    how hwcomp's kernel rules find the block their compute marked, never guessing from shapes."""
    blocks = sch.get_child_blocks(get_root_block(sch))
    marked = [b for b in blocks if attr in sch.get(b).annotations]
    return blocks, marked[0] if len(marked) == 1 else None


def _is_reduction(sch, block) -> bool:
    kinds = {iv.iter_type for iv in sch.get(block).iter_vars}
    return tirx.IterVar.CommReduce in kinds


def _is_spatial(sch, block) -> bool:
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def _largest_divisor(n: int, prefs: tuple[int, ...]) -> int:
    for p in prefs:
        if p > 0 and n % p == 0:
            return p
    return 1


def _row_tile(ext: int, mr: int) -> int:
    """TiledReduction's row tile for ``ext`` static rows with the ``mr`` knob: a divisor of ``ext``,
    or ``mr`` itself with a guarded last tile where ``ext`` has no good divisor. Below an 8-row knob
    (AVX-512's), 7 rows come first: 196 = 14 x 14 tokens (Swin-T's and ConvNeXt-T's stage 3) had
    tiles of 4, and 49 (stage 4) was padded to 56; measured alone with cold operands on an AVX-512
    Xeon, 196x1536x384 1.00 -> 0.94 ms and 49x3072x768 1.46 -> 1.31 ms with 7."""
    tile = _largest_divisor(ext, (mr, 7, 6, 4, 3, 2, 1) if mr >= 8 else (mr, 6, 4, 3, 2, 1))
    return mr if tile < min(mr, 3) < ext else tile


def _tiles_are_boxes(extents: list[int], tile: int) -> bool:
    """True when every run of ``tile`` consecutive indices of the fused loop over ``extents``
    (outermost first), starting at a multiple of ``tile``, is a box of the unfused axes:
    the tile divides the innermost extent, or covers whole rows of it, and so on outwards."""
    for e in reversed(extents):
        if tile <= e:
            return e % tile == 0
        if tile % e:
            return False
        tile //= e
    return True


def _vars_in(expr) -> list:
    return list(tirx.analysis.undefined_vars(expr))


def _region_vars(read) -> set:
    """The variables a block's read region is indexed by (the starts of its ranges)."""
    used = set()
    for r in read.region:
        used |= set(_vars_in(r.min))
    return used


def _downstream(sch: s_tir.Schedule, block) -> list:
    """Blocks that (transitively) consume ``block``'s output within the function."""
    seen, todo, out = set(), [block], []
    while todo:
        for c in sch.get_consumers(todo.pop()):
            name = sch.get(c).name_hint
            if name not in seen:
                seen.add(name)
                out.append(c)
                todo.append(c)
    return out


def _broadcasts_result(sch: s_tir.Schedule, main) -> bool:
    """Whether a stage after ``main`` reads an intermediate of the chain at fewer indices than it
    iterates over, i.e. spreads a reduced value over a larger tensor (RMS norm's ``x * rsqrt(mean)``,
    a squeeze-and-excitation gate ``x * sigmoid(fc(pool(x)))``)."""
    chain = [main, *_downstream(sch, main)]
    produced = [sch.get(b).writes[0].source for b in chain]
    for b in chain[1:]:
        stmt = sch.get(b)
        need = {iv.var for iv in stmt.iter_vars if _const_int(iv.dom.extent) != 1}
        for read in stmt.reads:
            if any(read.source.same_as(buf) for buf in produced) and not need <= _region_vars(read):
                return True
    return False


def schedule_injective(sch: s_tir.Schedule, block, lanes: int, min_parallel: int = 4096,
                       ragged: bool = False) -> None:
    """Parallelize the outer loops and vectorize the innermost loop of a spatial block.
    ``ragged``: an innermost loop with no multiple of the vector width is vectorized over its
    whole vectors, the remainder in a loop of its own. Off for whole functions: the partition's
    blocks hide a plain reshape from Relax's RewriteDataflowReshape, which then copies the tensor
    instead of viewing it (Whisper's 6 x 1500 x 1500 scores: 3.5 ms per copy)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    extents = [_const_int(sch.get(lp).extent) for lp in loops]
    # A symbolic extent (a dynamic sequence length) counts as large: at its smallest the loop is
    # short anyway, and a parallel loop that turns out short costs little.
    total = 1
    for e in extents:
        total *= e if e is not None else min_parallel
    inner = loops[-1]
    if extents[-1] is None:
        pass  # no vector split of a loop whose length is only known at run time
    elif extents[-1] >= lanes and extents[-1] % lanes == 0:
        outer_part, vec = sch.split(inner, [None, lanes])
        sch.vectorize(vec)
        loops = [*loops[:-1], outer_part]
    elif 1 < extents[-1] <= 2 * lanes:
        sch.vectorize(inner)
        loops = loops[:-1]
    elif ragged and extents[-1] > 2 * lanes:
        # a ragged row (197 tokens): whole vectors, then the remainder in a loop of its own (a
        # lane guard under the vector loop would scalarize all of it)
        body, _ = sch.loop_partition(inner, [extents[-1] // lanes * lanes, None])
        _, vec = sch.split(body, [None, lanes])
        sch.vectorize(vec)
        loops = loops[:-1]
    # Fusing a loop of symbolic extent under another one divides the fused index by that extent
    # (a 64-bit division by a run-time value, per element): fuse only up to the first symbolic
    # loop after the first loop, and leave the loops below serial.
    cut = next((k for k in range(1, len(loops)) if extents[k] is None), len(loops))
    loops = loops[:cut]
    if loops and total >= min_parallel:
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        sch.parallel(fused)


def vectorize_lanes(sch: s_tir.Schedule, loop, lanes: int) -> None:
    """Vectorize ``loop``; one of a non-power-of-two count of whole vectors (three zmm: 48 columns)
    as an unrolled loop of single vectors. LLVM lowers a ``<48 x float>`` loop body through lane
    shuffles (a 128x768x3072 matmul ran at 7 GFLOP/s instead of 250)."""
    ext = _const_int(sch.get(loop).extent)
    n = ext // lanes if ext is not None and lanes > 1 and ext % lanes == 0 else 0
    if n > 1 and n & (n - 1):
        outer, vec = sch.split(loop, [n, lanes])
        sch.unroll(outer)
        sch.vectorize(vec)
    else:
        sch.vectorize(loop)


def inline_epilogues(sch: s_tir.Schedule, tile) -> None:
    """Inline every consumer chain of the register ``tile`` (a cache-write block) into it, so bias,
    activation and residual run on the tile while it is in registers."""
    changed = True
    while changed:
        changed = False
        for c in sch.get_consumers(tile):
            try:
                sch.reverse_compute_inline(c)
                changed = True
            except s_tir.ScheduleError:
                pass


def spatial_then_reduction(sch: s_tir.Schedule, block) -> list[str] | None:
    """``"S"``/``"R"`` per loop of a block whose loops are its iter vars, every spatial one before
    every reduction one, at least one spatial; None otherwise."""
    ivars = list(sch.get(block).iter_vars)
    if len(sch.get_loops(block)) != len(ivars):
        return None
    kinds = ["S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in ivars]
    n_s = kinds.count("S")
    if kinds != ["S"] * n_s + ["R"] * (len(kinds) - n_s) or n_s == 0:
        return None
    return kinds


def schedule_root_stages(sch: s_tir.Schedule, par, vector_bits: int) -> None:
    """Give the injective schedule to the spatial stages left at the root beside the tiled loop
    ``par`` (padding, epilogues that change layout)."""
    tile_root = sch.get(par)
    for b in sch.get_child_blocks(get_root_block(sch)):
        loops_b = sch.get_loops(b)
        if loops_b and _is_spatial(sch, b) and not sch.get(loops_b[0]).same_as(tile_root):
            schedule_injective(sch, b, _lanes(vector_bits, sch.get(b).writes[0].source.dtype.bits), ragged=True)


class _CPURule(ScheduleRule):
    """A dlight rule for LLVM CPU targets: ``_apply`` returns a schedule, or None (or raises a
    schedule error) where the function is not of its kind."""

    def __init__(self, vector_bits: int):
        # The vector width comes from hwcomp's target description: LLVM's own query reports 512
        # bits for AVX2-only x86 CPUs.
        self.vector_bits = vector_bits

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            return self._apply(func, target)
        except (s_tir.ScheduleError, ValueError, IndexError):
            return None

    def _apply(self, func: tirx.PrimFunc, target: Target):
        raise NotImplementedError


#: Largest padded result (bytes) sliced back in a stage of its own rather than in the tile's store.
_SLICE_STAGE_BYTES = 4 << 20


def _result_bytes(stmt) -> int:
    """Bytes of the block's (padded) result; a symbolic extent counts as large."""
    n = stmt.writes[0].source.dtype.bits // 8
    for iv in stmt.iter_vars:
        if iv.iter_type == tirx.IterVar.DataPar:
            ext = _const_int(iv.dom.extent)
            n *= ext if ext is not None else 1 << 20
    return n


class _TileAxes(NamedTuple):
    stmt: Any
    loops: list
    ivars: list
    kinds: list[str]
    n_s: int
    extents: list[int | None]
    j: int
    i: int | None
    broadcast_used: set[int]


def _tile_axes(sch: s_tir.Schedule, main) -> _TileAxes | None:
    """The register tile's axes of a one-reduction block: ``j`` the vectorized column axis, ``i``
    the row axis (None if there is none), positions in the block's iter vars; None when the block
    is not spatial-then-reduction with a spatial column. Extents are None where symbolic (a
    dynamic sequence length)."""
    stmt = sch.get(main)
    loops = sch.get_loops(main)
    ivars = list(stmt.iter_vars)
    kinds = spatial_then_reduction(sch, main)
    if kinds is None:
        return None
    n_s = kinds.count("S")
    extents = [_const_int(iv.dom.extent) for iv in ivars]
    var_pos = {iv.var: p for p, iv in enumerate(ivars)}

    out_region = stmt.writes[0].region
    j = var_pos.get(out_region[-1].min) if out_region else None
    if j is None or kinds[j] != "S":
        return None
    # The row axis is the one the "broadcast" operand (A of A@B, the weight of a conv) is
    # indexed by while it ignores the vectorized column axis.
    i = None
    broadcast_used: set[int] = set()
    for read in stmt.reads:
        if read.source.same_as(stmt.writes[0].source):
            continue
        used = {var_pos[v] for v in _region_vars(read) if v in var_pos}
        if j not in used:
            cands = [p for p in used if kinds[p] == "S" and (extents[p] is None or extents[p] > 1)]
            if cands:
                i = max(cands)
                broadcast_used = used
    if i is None:
        spatial_before = [p for p in range(n_s) if p != j and (extents[p] is None or extents[p] > 1)]
        i = spatial_before[-1] if spatial_before else None
    return _TileAxes(stmt, loops, ivars, kinds, n_s, extents, j, i, broadcast_used)


class TiledReduction(_CPURule):
    """Register-tiled schedule for one-reduction functions (matmul, batch matmul, conv)."""

    def __init__(self, vector_bits: int, knobs: TileKnobs | None = None, l2_bytes: int | None = None):
        super().__init__(vector_bits)
        self.knobs = knobs or TileKnobs()
        self.l2_bytes = l2_bytes

    def _apply(self, func, target, pad_rows: bool = False):
        knobs = self.knobs
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(get_root_block(sch))
        reductions = [b for b in blocks if _is_reduction(sch, b)]
        if len(reductions) != 1 or not all(
            _is_spatial(sch, b) for b in blocks if b not in reductions
        ):
            return None
        main = reductions[0]
        # A reduced value spread over a larger tensor is a row reduction (RowReduction's job), not
        # a register tile with an epilogue. Tiling it would also try to reverse_compute_inline the
        # broadcasting stage into the tile, which TVM 0.27 answers with an InternalError ("Cannot
        # dispatch a null expression") instead of a ScheduleError, killing the whole build.
        if _broadcasts_result(sch, main):
            return None

        before = _tile_axes(sch, main)
        padded = self._pad_symbolic(sch, main, before.i if before else None, pad_rows)

        # Prologues (reshape, transpose) fold into the reduction's loads; padding stays a separate
        # stage because an if_then_else in the innermost loop defeats vectorization, and so do
        # stages their author marked ``hwcomp.materialize`` (an int8 -> float conversion done once).
        for b in blocks:
            if b != main and _is_spatial(sch, b) and sch.get_consumers(b) and not _has_conditional(sch, b) \
                    and MATERIALIZE not in sch.get(b).annotations:
                try:
                    sch.compute_inline(b)
                except s_tir.ScheduleError:
                    pass

        axes = _tile_axes(sch, main)
        if axes is None:
            return None
        stmt, loops, ivars, kinds, n_s, extents, j, i, broadcast_used = axes

        # Row axes side by side (a Linear over [B, H, W, C]: ConvNeXt, Swin) become one row axis:
        # 14 x 14 = 196 rows tile by 7 (AVX-512) or 4, where 14 alone gave tiles of 2 rows (13.5 GFLOP/s).
        if i is not None and not padded and extents[i] is not None:
            start = i
            while start > 0 and start - 1 != j and kinds[start - 1] == "S" and extents[start - 1] is not None \
                    and start - 1 not in broadcast_used and extents[start - 1] > 1:
                start -= 1
            # cache_write's write-back, placed under the row tile by reverse_compute_at, covers the
            # tile's bounding box in the unfused axes: a tile straddling the end of an inner row
            # would store lanes it never computed (a padded max-pool over 3 rows tiled by 4 gave
            # garbage). Fuse only the axes whose tiles are exact boxes.
            while start < i and not _tiles_are_boxes(
                    extents[start:i + 1], _row_tile(math.prod(extents[start:i + 1]), knobs.mr)):
                start += 1
            if start < i:
                fused = sch.fuse(*loops[start:i + 1])
                ext = 1
                for p in range(start, i + 1):
                    ext *= extents[p]
                drop = i - start
                loops = [*loops[:start], fused, *loops[i + 1:]]
                extents = [*extents[:start], ext, *extents[i + 1:]]
                kinds = [*kinds[:start], "S", *kinds[i + 1:]]
                n_s -= drop
                j = j - drop if j > i else j
                i = start

        dtype_bits = stmt.writes[0].source.dtype.bits
        lanes = _lanes(self.vector_bits, dtype_bits)
        nr_pref = tuple(lanes * v for v in range(knobs.nr_vectors, 0, -1))
        ext_j = extents[j]
        if ext_j is None and j in padded:
            nr = padded[j]
        elif ext_j is None:
            return self._symbolic_columns(sch, main, loops, n_s, i, j, extents, knobs)
        elif ext_j <= 2 * lanes:
            nr = ext_j
        else:
            nr = _largest_divisor(ext_j, nr_pref)
            if nr == 1:
                nr = _largest_divisor(ext_j, tuple(range(2 * lanes, 1, -1)))
        # no good divisor (197 tokens, 49 pixels): full tiles and one guarded last tile, not
        # tiles of one row (3.5x slower at 197 tokens than at 198) -- _row_tile
        mr = 1 if i is None else padded.get(i, knobs.mr) if extents[i] is None else _row_tile(extents[i], knobs.mr)
        if not pad_rows and not padded and i is not None and extents[i] is not None and extents[i] % mr \
                and len(loops) == len(ivars):
            # A guarded last row tile keeps the rows that may be out of range in memory, not in
            # registers (LLVM cannot prove them live): pad the rows to a multiple of the tile
            # instead (197 tokens, AVX-512, 8-row tiles: 1.6 -> 1.0 ms). Guarded tiles remain
            # where padding is refused.
            retry = self._apply(func, target, pad_rows=True)
            if retry is not None:
                return retry

        j0, j1 = sch.split(loops[j], [None, nr])
        if i is not None:
            i0, i1 = sch.split(loops[i], [None, mr])
        r_loops = list(loops[n_s:])
        if knobs.kc and len(r_loops) == 1 and extents[n_s] is not None and extents[n_s] % knobs.kc == 0 \
                and extents[n_s] > knobs.kc:
            k0, k1 = sch.split(r_loops[0], [None, knobs.kc])
            r_loops = [k0, k1]
        outer = [loops[p] for p in range(n_s) if p not in (i, j)]
        tile_outer = ([j0, i0] if knobs.panel_outer else [i0, j0]) if i is not None else [j0]
        inner = ([i1] if i is not None else []) + [j1]
        rows_first = i is not None and knobs.panel_outer and self._rows_outer(stmt, extents[i], mr,
                                                                             rows_outer_max_bytes(self.l2_bytes))
        if rows_first:
            # row tiles outermost, every panel of a small weight under each: the rows are read once
            outer, tile_outer = [i0, *outer], [j0]
        sch.reorder(*outer, *tile_outer, *r_loops, *inner)

        cw = sch.cache_write(main, 0, "local")
        sch.reverse_compute_at(cw, tile_outer[-1], preserve_unit_loops=True)
        if j in padded and _result_bytes(stmt) <= _SLICE_STAGE_BYTES:
            # Padded columns: the tile is stored whole into the padded result, and the slice back
            # (with the epilogues) is a stage of its own, vectorized over whole vectors. Folded into
            # the tile's store, its lane guard scalarized every store (ViT's 6 x 197 x 197 scores:
            # 0.24 -> 0.18 ms). A large result stays folded: the extra pass over it costs more
            # (Whisper's 6 x 1500 x 1504 scores: 10.0 -> 12.4 ms).
            for c in sch.get_consumers(cw):
                inline_epilogues(sch, c)
        else:
            inline_epilogues(sch, cw)

        if i is not None and mr > 1:
            sch.unroll(i1)
        vectorize_lanes(sch, j1, lanes)
        cw_loops = sch.get_loops(cw)
        n_tile = len(outer) + len(tile_outer)
        epi = cw_loops[n_tile:]
        if epi:
            vectorize_lanes(sch, epi[-1], lanes)
            if len(epi) > 1:
                sch.unroll(epi[-2])
        # task = panel * row tiles + row tile when the row tile is the innermost tile loop
        tasks = [_const_int(sch.get(lp).extent) for lp in (*outer, *tile_outer)]
        panels_rows = (math.prod(tasks[:-1]), tasks[-1]) \
            if knobs.panel_outer and i is not None and None not in tasks and not rows_first else None
        par = sch.fuse(*outer, *tile_outer) if len(outer) + len(tile_outer) > 1 else tile_outer[0]
        sch.parallel(par)
        sch.decompose_reduction(main, r_loops[0])

        schedule_root_stages(sch, par, self.vector_bits)
        k = extents[n_s] if len(r_loops) == 1 and len(extents) == n_s + 1 else None
        if panels_rows is not None and k is not None:
            # a packed weight [panels, K, nr] streamed panel by panel: prefetch the next panels, or
            # with many row tiles over few panels the next tile's rows
            if panels_rows[1] > MAX_ROW_TILES:
                return with_row_prefetch(sch, par, main, panels_rows[0], panels_rows[1], k, mr)
            return with_panel_prefetch(sch, par, main, r_loops[0], panels_rows[0], panels_rows[1], k, nr)
        return sch

    @staticmethod
    def _rows_outer(stmt, rows: int | None, mr: int, max_bytes: int) -> bool:
        """Whether the row tiles go outermost, each running every column panel, instead of the
        panels outermost: many row tiles (a large activation: Swin's and ConvNeXt's stage-1
        ``3136 x 384 x 96``) over a column operand that stays in L2. Panel by panel, each panel
        streamed the whole activation again. Measured on an AVX-512 Xeon, 2 threads, weights cold:
        3136x384x96 0.82 -> 0.76 ms, 3136x96x384 0.88 -> 0.82, 3136x384x144 1.26 -> 1.10, equal at
        784x768x192 (576 KB), 1.3x slower at 1500x384x1536 (2.3 MB) and 1.12x at 128x768x768 (16 row
        tiles). No spatial axis may index both operands (a batched matmul's batch stays outermost):
        then the axes outside the tile are the packed weight's panel index and unit axes."""
        if rows is None or rows // mr <= ROWS_OUTER_MIN_TILES or not stmt.writes[0].region:
            return False
        col = stmt.writes[0].region[-1].min
        spatial = {iv.var for iv in stmt.iter_vars
                   if iv.iter_type == tirx.IterVar.DataPar and _const_int(iv.dom.extent) != 1}
        column_bytes, by_rows, by_cols = 0, set(), set()
        for read in stmt.reads:
            if read.source.same_as(stmt.writes[0].source):
                continue
            used = {v for v in _region_vars(read) if v in spatial}
            if any(v.same_as(col) for v in used):
                shape = [_const_int(d) for d in read.source.shape]
                if None in shape:
                    return False
                column_bytes += math.prod(shape) * read.source.dtype.bits // 8
                by_cols |= used
            else:
                by_rows |= used
        return 0 < column_bytes <= max_bytes and by_rows and not by_rows & by_cols

    def _pad_symbolic(self, sch, main, row: int | None = None, pad_rows: bool = False) -> dict[int, int]:
        """Pad axes of the reduction whose tiles would otherwise need a guard in the inner loops
        (``pad_einsum``: the inputs are copied into padded buffers and the result sliced back):
        each symbolic row axis (a dynamic sequence length) up to a multiple of the register tile,
        and a static column axis with no multiple of the vector lanes as divisor (attention scores
        over 197 or 1500 tokens) up to a multiple of two vectors. A guard there keeps the tile out
        of registers, and TVM scalarizes a vector loop under one (197 columns ran as 1-wide tiles).
        ``row``: the row axis (``_tile_axes``), the only static axis padded for padded columns;
        ``pad_rows``: pad it to a multiple of the row tile in any case.
        Returns axis position → padding factor; {} when nothing needs it or the block is not an
        einsum (then the guarded tiles are used)."""
        stmt = sch.get(main)
        ivars = list(stmt.iter_vars)
        if not stmt.writes:
            return {}
        last = stmt.writes[0].region[-1].min if stmt.writes[0].region else None
        lanes = _lanes(self.vector_bits, stmt.writes[0].source.dtype.bits)
        padding = [1] * len(ivars)
        for p, iv in enumerate(ivars):
            if iv.iter_type != tirx.IterVar.DataPar:
                continue
            ext = _const_int(iv.dom.extent)
            is_col = last is not None and iv.var.same_as(last)
            if ext is None and is_col:
                # symbolic columns (attention scores): padding would copy the n x n result back
                # out, as much traffic as the short (head-size) reduction itself: whole-row tiles
                return {}
            if ext is None:
                padding[p] = self.knobs.mr
            elif is_col and ext > 2 * lanes and ext % lanes:
                padding[p] = 2 * lanes
            elif pad_rows and p == row and ext % self.knobs.mr:
                padding[p] = self.knobs.mr
        if all(f == 1 for f in padding):
            return {}
        # padded columns: a ragged static row axis is padded too (a guarded row tile over a padded
        # einsum computed wrong results at 197 x 197 in TVM 0.27). Only the row axis: padding every
        # ragged axis also padded 6 or 12 attention heads to 8 or 16 (a third more work at 8-row
        # tiles) and a 32-lane weight panel to 36 (40x slower at 6-row tiles).
        if row is not None and padding[row] == 1:
            ext = _const_int(ivars[row].dom.extent)
            if ext is not None and ext > self.knobs.mr and ext % self.knobs.mr:
                padding[row] = self.knobs.mr
        try:
            sch.pad_einsum(main, padding)
        except Exception:  # noqa: BLE001 - not an einsum (TVM raises assorted errors): use guarded tiles
            return {}
        return {p: f for p, f in enumerate(padding) if f > 1}

    def _symbolic_columns(self, sch, main, loops, n_s, i, j, extents, knobs):
        """The column axis has a symbolic extent (attention scores ``Q @ K^T`` over a dynamic
        sequence): a vector tile over it needs a per-lane guard, which TVM scalarizes (8x slower
        than static, measured). Instead each tile is ``mr`` whole rows: the column loop runs
        innermost, unsplit, with no guard, for LLVM's loop vectorizer (a vector body and a scalar
        remainder); the output rows are accumulated in place."""
        mr = 1 if i is None else knobs.mr if extents[i] is None else \
            _largest_divisor(extents[i], (knobs.mr, 6, 4, 3, 2, 1))
        tile_outer, inner = [], []
        if i is not None:
            i0, i1 = sch.split(loops[i], [None, mr])
            tile_outer, inner = [i0], [i1]
        r_loops = list(loops[n_s:])
        outer = [loops[p] for p in range(n_s) if p not in (i, j)]
        sch.reorder(*outer, *tile_outer, *r_loops, *inner, loops[j])
        if inner and mr > 1:
            sch.unroll(inner[0])
        par_loops = [*outer, *tile_outer]
        if par_loops:
            par = sch.fuse(*par_loops) if len(par_loops) > 1 else par_loops[0]
            sch.parallel(par)
        sch.decompose_reduction(main, r_loops[0])
        for b in sch.get_child_blocks(get_root_block(sch)):
            loops_b = sch.get_loops(b)
            if loops_b and _is_spatial(sch, b) and b != main and (
                    not par_loops or not sch.get(loops_b[0]).same_as(sch.get(par))):
                schedule_injective(sch, b, _lanes(self.vector_bits, sch.get(b).writes[0].source.dtype.bits))
        return sch
