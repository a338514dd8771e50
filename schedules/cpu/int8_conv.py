"""Int8 convolution in the blocked channel layout (NCHW[x]c) on LLVM CPU targets: the schedule.

The computes are ``hwcomp.quantize.int8_conv``'s: activations ``[N, C/xi, H, W, xi]`` (uint8 or
int8), weights packed ``[O/xo, C/xi, KH, KW, xi/kb, xo, kb]`` so that ``lanes x kb`` bytes — the
operand of the target's dot instruction (AVX2 ``vpmaddubsw`` 8x4, AVX-512 VNNI ``vpdpbusd`` 16x4,
AArch64 ``sdot`` 4x4) — are contiguous. As in the fp32 NeoCPU schedule (``conv.py``), a register
tile of ``reg_n`` output pixels x ``xo`` output channels of int32 accumulators stays in registers
while the reduction runs over input-channel blocks, kernel rows and columns and the ``xi/kb`` dot
steps of a block; each step broadcasts ``kb`` input bytes and issues one dot per ``lanes`` outputs.
The epilogue (bias, requantize to the next layer's int8, or dequantize to float and activate) runs
on the tile before the store, so int32 never reaches memory.

The compute pads the output row to whole tiles (``reg_n`` divides its width), so the tensorized
loop never runs under a guard.
"""

from __future__ import annotations

import math

from tvm import s_tir

from .conv import ROWS_OUTER_WEIGHT_CAP, choose_reg_n
from .rules import _const_int


def int8_reg_n(ow: int, vectors: int, registers: int = 16, accumulators: int | None = None) -> int:
    """Output pixels per register tile for ``vectors`` accumulator registers per pixel; the dot
    sequences need two more temporaries than an FMA (AVX2: the s16 pairs and the ones vector).
    ``accumulators``: the most accumulator registers a tile may take instead (a target whose dot
    step is bound by its multiply ports, not its loads, can take LLVM's spills of the rest)."""
    return choose_reg_n(ow, vectors, registers - 2, accumulators)


def _schedule_pad(sch: s_tir.Schedule, vector_bits: int) -> None:
    """The zero-point padding stage, if any: rows in parallel, each row's bytes as whole vectors
    (the generic injective schedule fuses every loop and pays a 64-bit division per vector)."""
    try:
        pad = sch.get_sblock("pad")
    except s_tir.ScheduleError:
        return
    loops = sch.get_loops(pad)  # (b, c, y, z, v) blocked, or (b, y, byte) for a folded conv's rows
    row_loops = loops[3:] if len(loops) == 5 else loops[2:]
    sch.parallel(sch.fuse(*loops[: len(loops) - len(row_loops)]))
    row = sch.fuse(*row_loops) if len(row_loops) > 1 else row_loops[0]
    ext = _const_int(sch.get(row).extent)
    lanes = vector_bits // 8
    if ext is not None and ext % lanes == 0:
        _, vec = sch.split(row, [None, lanes])
        sch.vectorize(vec)


def schedule_quantize_hwc(func, vector_bits: int):
    """``int8_conv.quantize_blocked_func`` with one block of all channels (HWC, a folded conv's
    input): rows in parallel, each row's pixels as vectors with the few channels unrolled inside
    (the float reads stay contiguous). Opaque to FuseOps: fused with the reshape that follows it
    (a free view on its own) it lost this schedule, 0.016 -> 0.073 ms for a 224x224 image."""
    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("quantize")
    b, cb, y, z, v = sch.get_loops(blk)
    sch.parallel(sch.fuse(b, cb, y))
    lanes = max(vector_bits // 32, 1)
    ext = _const_int(sch.get(z).extent)
    if ext is not None and ext % lanes == 0:
        zo, zi = sch.split(z, [None, lanes])
        sch.reorder(zo, v, zi)
        sch.vectorize(zi)
    sch.unroll(v)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8)


def _schedule_output(sch: s_tir.Schedule, out, x: int) -> None:
    """The epilogue over one register tile (``x`` channels x ``reg_n`` pixels, computed at the tile).
    Blocked output: the channel lanes are innermost, one vector per pixel. NCHW float output (for a
    float consumer): its loops come channel, row, pixel; the pixels go outside and the channels
    inside, so the epilogue still runs on one vector of channels per pixel (the accumulator's own
    layout) and only the store is strided. Unrolling the pixels innermost instead left LLVM a
    scalar epilogue per element: int8 EfficientNet-B0 (its squeeze-excite inputs are such outputs)
    5.37 -> 4.97 ms with VNNI and 7.56 -> 6.97 with the AVX2 kernels, ConvNeXt-T 1.04x, ResNet-50
    (its last conv) 1.02x, interleaved in one process on the Zen 4; a 1x1 64->256 at 56x56 alone
    0.33 -> 0.17-0.24 ms. Vectorizing the pixels instead (a strided read of the tile) measured no
    faster in EfficientNet-B0."""
    loops = sch.get_loops(out)
    if len(sch.get(out).iter_vars) == 4 and len(loops) >= 3 and _const_int(sch.get(loops[-3]).extent) == x:
        f, z = loops[-3], loops[-1]  # NCHW: (.., channel, row, pixel)
        sch.reorder(z, f)
        sch.vectorize(f)
        sch.unroll(z)
        return
    ext = _const_int(sch.get(loops[-1]).extent)
    if ext is not None and ext == x:  # blocked output: the channel lanes are innermost
        sch.vectorize(loops[-1])
    elif ext is not None and ext > 1:
        sch.unroll(loops[-1])


def int8_rows_outer(rows: int, weight_bytes: int, cores: int) -> bool:
    """Whether a blocked int8 conv's parallel tasks should be output rows, each over every
    output-channel block, rather than (block, row) pairs. By blocks, every block's task re-reads its
    input row, so the whole input streams from L2/L3 once per block (a stride-2 1x1 uses half of
    every line it loads); by rows, a row's input stays in L1 while all the weights, at most
    640 KB, come from L2. Interleaved on 2 Zen 4 cores, AVX2 dot step, operands cold: ResNet-50's
    stride-2 1x1 convs 1.15-1.18x, 1x1 64->256 at 56x56 1.15x, 256->1024 at 14x14 1.27x,
    3x3 at 14x14 and 56x56 1.03-1.06x; at 7x7 (7 rows on 2 cores) 0.91-0.95x, so rows must split
    evenly over the cores (within 10 %). Whole int8 models, interleaved: ResNet-50 1.06x (AVX2)
    and 1.08x (VNNI), MobileNetV2 1.03x, ResNet-18 1.02x, EfficientNet-B0 unchanged. The 640 KB
    cap is the fp32 rule's (``conv.inputs_once``), measured with a 1 MB L2; on a Zen 3 (512 KB)
    and on the ARM boards, which take the same rule, it is unmeasured."""
    if cores <= 0 or rows < 2 * cores or weight_bytes > ROWS_OUTER_WEIGHT_CAP:
        return False
    return -(-rows // cores) * cores <= 1.1 * rows


def _weight_bytes(func) -> int:
    w = func.params[1]
    return math.prod(int(d) for d in w.shape) * w.dtype.bits // 8


def schedule_conv_nchwc_int8(func, lanes: int, intrin: str | None, vector_bits: int, cores: int = 1):
    """Schedule ``hwcomp.quantize.int8_conv.conv2d_nchwc_int8_func``'s PrimFunc (blocks ``acc``,
    ``out`` and an optional ``pad``): tensorize the ``lanes x kb`` dot with ``intrin`` (None: leave
    the inner product to LLVM's vectorizer). ``cores``: the target's, for the task order
    (:func:`int8_rows_outer`)."""
    sch = s_tir.Schedule(func)
    acc = sch.get_sblock("acc")
    out = sch.get_sblock("out")
    loops = sch.get_loops(acc)
    n, oc, oh, ow, v, rc, ry, rx, rf = loops[:9]
    inner = loops[9:]  # (rk) or (rh, rk): the dot's bytes per lane
    reg_n = int(func.attrs["hwcomp.reg_n"])
    xo = _const_int(sch.get(v).extent)
    ow_o, ow_i = sch.split(ow, [None, reg_n])
    v_o, v_i = sch.split(v, [None, lanes])
    rows_outer = int8_rows_outer(_const_int(sch.get(n).extent) * _const_int(sch.get(oh).extent),
                                 _weight_bytes(func), cores)
    if rows_outer:
        sch.reorder(n, oh, oc, ow_o, rc, ry, rx, rf, ow_i, v_o, v_i, *inner)
    else:
        sch.reorder(n, oc, oh, ow_o, rc, ry, rx, rf, ow_i, v_o, v_i, *inner)
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(out, ow_o, preserve_unit_loops=True)
    par = sch.fuse(n, oh) if rows_outer else sch.fuse(n, oc, oh)
    sch.parallel(par)
    init = sch.decompose_reduction(acc, rc)
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])
    sch.unroll(ow_i)
    sch.unroll(v_o)
    if intrin is not None:
        sch.tensorize(v_i, intrin)
    else:
        sch.vectorize(v_i)
    _schedule_output(sch, out, xo)
    _schedule_pad(sch, vector_bits)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_depthwise_nchwc_int8(func, vector_bits: int):
    """Schedule ``depthwise_nchwc_int8_func``: ``reg_n`` pixels x ``x`` channels of int32 in
    registers, the kernel window reduced around them, the channel lanes vectorized (LLVM widens
    the bytes and multiplies in 32-bit lanes)."""
    sch = s_tir.Schedule(func)
    acc = sch.get_sblock("acc")
    out = sch.get_sblock("out")
    n, cc, oh, ow, v, ry, rx = sch.get_loops(acc)
    reg_n = int(func.attrs["hwcomp.reg_n"])
    ow_o, ow_i = sch.split(ow, [None, reg_n])
    sch.reorder(n, cc, oh, ow_o, ry, rx, ow_i, v)
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(out, ow_o, preserve_unit_loops=True)
    par = sch.fuse(n, cc, oh)
    sch.parallel(par)
    sch.unroll(ow_i)
    sch.vectorize(v)
    init = sch.decompose_reduction(acc, ry)
    sch.vectorize(sch.get_loops(init)[-1])
    _schedule_output(sch, out, _const_int(sch.get(v).extent))
    _schedule_pad(sch, vector_bits)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


__all__ = ["int8_reg_n", "int8_rows_outer", "schedule_conv_nchwc_int8", "schedule_depthwise_nchwc_int8",
           "schedule_quantize_hwc"]
