"""Default CPU schedules for functions without one reduction feeding a register tile: element-wise /
layout functions (:class:`Injective`) and row-wise reductions with element-wise stages
(:class:`RowReduction`: softmax, layer norm, RMS norm). Shared helpers live in :mod:`.rules`."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block

from .rules import _const_int, _CPURule, _is_spatial, _lanes, schedule_injective


class Injective(_CPURule):
    """Element-wise / layout functions: inline chains, then parallel + vectorize."""

    def _apply(self, func, target):
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(get_root_block(sch))
        if not blocks or not all(_is_spatial(sch, b) for b in blocks):
            return None
        for b in blocks[:-1]:
            try:
                sch.compute_inline(b)
            except s_tir.ScheduleError:
                pass
        for b in sch.get_child_blocks(get_root_block(sch)):
            schedule_injective(sch, b, _lanes(self.vector_bits, sch.get(b).writes[0].source.dtype.bits))
        return sch


class RowReduction(_CPURule):
    """Row-wise reductions with elementwise stages (softmax, layer norm, RMS norm).

    Like dlight's CPU ``Reduction`` (rows in parallel, every stage computed per row, elementwise
    stages vectorized), but each reduction over a row is vectorized too: it is split into
    ``lanes`` partial accumulators (``rfactor``, done before the stages are moved under the row
    loop, where rfactor is still allowed) that live in registers and are combined once per row.
    A serial float max/sum chain is bound by the add latency (BERT-base's layer norm: 0.15 ms →
    0.03 ms per call).
    """

    def _apply(self, func, target):
        from tvm.s_tir.dlight.analysis import normalize_prim_func

        sch = s_tir.Schedule(func)
        # Elementwise stages with one consumer (mask, where, quantize after a softmax) fold into it:
        # fewer row-sized temporaries. A stage read twice (softmax's exp) stays, or it is recomputed.
        for block in sch.get_child_blocks(get_root_block(sch))[:-1]:
            if _is_spatial(sch, block) and len(sch.get_consumers(block)) == 1:
                try:
                    sch.compute_inline(block)
                except s_tir.ScheduleError:
                    pass
        infos = normalize_prim_func(sch)
        if infos is None or len(infos) < 2 or not infos[-1].is_injective():
            return None
        if all(bi.is_injective() for bi in infos):
            return None
        kinds = [bi.dom_kind() for bi in infos]
        # Every stage is "rows then (spatial or reduction) columns", with the same row count.
        n_rows = min(len(k) - len(k.lstrip("S")) for k in kinds)
        if n_rows == 0 or any(k[0] != "S" for k in kinds):
            return None
        for bi in infos:
            if not bi.is_injective() and not bi.dom_kind().endswith("R"):
                return None
        blocks = [bi.block_rv for bi in infos]
        # Two vectors per step: fast_exp's polynomial is one long dependency chain, and two
        # independent vectors per iteration measured 1.3x faster on softmax than one.
        lanes = 2 * _lanes(self.vector_bits, sch.get(blocks[-1]).writes[0].source.dtype.bits)

        ordered, rf_blocks = [], []
        for bi, block in zip(infos, blocks):
            if bi.is_injective():
                ordered.append(block)
                continue
            r = sch.get_loops(block)[-1]
            ext = _const_int(sch.get(r).extent)
            if ext is None or ext < 2 * lanes or ext % lanes:
                ordered.append(block)
                continue
            _, rl = sch.split(r, [None, lanes])
            # The partial accumulators keep the default scope: compacted to one row's vector
            # under the row loop, LLVM keeps them in registers. In "local" scope TVM 0.27 gave
            # each row a TVMBackendAllocWorkspace call (BERT-shaped softmax 0.128 -> 0.085 ms).
            rf = sch.rfactor(rl, factor_axis=len(sch.get(block).writes[0].region))
            ordered += [rf, block]
            rf_blocks.append(rf)

        last = ordered[-1]
        loops = sch.get_loops(last)
        rows = sch.fuse(*loops[:n_rows]) if n_rows > 1 else loops[0]
        sch.parallel(rows)
        for b in reversed(ordered[:-1]):
            sch.compute_at(b, rows, preserve_unit_loops=True)
        for b in ordered:
            inner = sch.get_loops(b)[-1]
            if sch.get(inner).same_as(sch.get(rows)):
                continue
            it = {iv.iter_type for iv in sch.get(b).iter_vars}
            ext = _const_int(sch.get(inner).extent)
            if tirx.IterVar.CommReduce in it:
                # the rfactor block (its lane loop comes first under the row loop): move the lane
                # loop innermost and vectorize it
                bl = sch.get_loops(b)
                below = bl[[sch.get(lp).same_as(sch.get(rows)) for lp in bl].index(True) + 1:]
                if len(below) >= 2 and _const_int(sch.get(below[0]).extent) == lanes and b in rf_blocks:
                    sch.reorder(*below[1:], below[0])
                    sch.vectorize(below[0])
                    sch.decompose_reduction(b, below[1])
                continue
            if ext is not None and ext > lanes and ext % lanes == 0:
                _, v = sch.split(inner, [None, lanes])
                sch.vectorize(v)
            elif ext is not None and 1 < ext <= lanes:
                sch.vectorize(inner)
            elif ext is not None and ext > lanes and b == last:
                # a ragged row (a padded softmax sliced back to 1500 columns): whole vectors, then
                # the remainder in a loop of its own (a guard under the vector loop would scalarize it)
                main, _ = sch.loop_partition(inner, [ext // lanes * lanes, None])
                _, v = sch.split(main, [None, lanes])
                sch.vectorize(v)
        return sch
