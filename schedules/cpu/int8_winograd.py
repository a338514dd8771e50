"""The int8 Winograd convolution's output transform on LLVM CPU targets: the schedule.

The compute is ``hwcomp.quantize.int8_winograd.output_func``'s (``Aᵀ (ρ ⊙ M) A`` per tile, then the
blocked int8 conv's epilogue); the input transform is ``winograd.py``'s hand-written TIR with
integer types, the products are scheduled as a blocked int8 conv (``int8_conv.py``) tensorized
with the provider's int16 dot. Tasks are (image, output-channel block, tile row); per tile the
``m x m`` transform goes to registers (the stage computed at the tile, its pixels unrolled so the
per-pixel selection folds to straight-line code sharing the inner sums, the channel block one
vector), then the epilogue runs on it pixel by pixel before the store.
"""

from __future__ import annotations

from tvm import s_tir

from .rules import _const_int


def schedule_int_winograd_output(func, m: int, block: int = 16):
    """Schedule ``output_func``'s PrimFunc (blocks ``transform`` and ``out``, blocked or NCHW)."""
    sch = s_tir.Schedule(func)
    tr = sch.get_sblock("transform")
    out = sch.get_sblock("out")
    loops = sch.get_loops(out)
    if len(loops) == 4:  # NCHW float output: channel blocks outside, the block's lanes innermost
        b, f, y, x = loops
        k, v = sch.split(f, [None, block])
    else:
        b, k, y, x, v = loops
    ty, yi = sch.split(y, [None, m])
    tx, xi = sch.split(x, [None, m])
    sch.reorder(b, k, ty, tx, yi, xi, v)
    sch.compute_at(tr, tx, preserve_unit_loops=True)
    sch.set_scope(tr, 0, "local")
    t_loops = sch.get_loops(tr)
    for lp in t_loops[-3:-1]:
        sch.unroll(lp)
    if _const_int(sch.get(t_loops[-1]).extent) == block:
        sch.vectorize(t_loops[-1])
    sch.unroll(yi)
    sch.unroll(xi)
    sch.vectorize(v)
    sch.parallel(sch.fuse(b, k, ty))
    # Opaque to FuseOps: Relax sees an injective function and would fuse a following reshape into
    # it (a 1x1 conv's row view, ``int8_conv.row_view``), replacing this schedule with the default
    # rules' (ResNet-50's 14x14 output transform 0.106 -> 0.129 ms per run, AVX2 kernels).
    return sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8)


__all__ = ["schedule_int_winograd_output"]
