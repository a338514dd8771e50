"""Convolution in the blocked channel layout (NCHW[x]c) for LLVM CPU targets: computes and schedule.

The NeoCPU recipe (Liu et al., USENIX ATC 2019): activations are ``[N, C/x, H, W, x]`` so the
``x`` channels of one pixel are one (or two) vector registers, weights are pre-packed at compile
time as ``[O/x, I/xi, KH, KW, xi, x]``. A register tile of ``reg_n`` output pixels along the row
times the ``x`` output channels accumulates while the reduction runs over input-channel blocks,
kernel rows and columns; each step broadcasts one input value and does one FMA per weight vector,
so the tile stays in registers with no shuffles, at any stride. The epilogue (bias, folded
batch-norm, activation, residual add — whatever ``FuseOps`` put after the convolution) is applied
to the tile before it is stored.

``conv2d_nchwc`` / ``depthwise_nchwc`` are TE computes the layout pass
(``hwcomp.passes.blocked_layout``) emits; :class:`BlockedConv` is the dlight rule that schedules
the fused function around them. Both know the convolution by its block annotation
(:data:`CONV_ATTR`), so the rule never guesses from shapes.
"""

from __future__ import annotations

import dataclasses
import math

from tvm import s_tir, te, topi

from .prefetch import with_block_prefetch, with_slice_prefetch
from .rules import (
    _broadcasts_result,
    _const_int,
    _CPURule,
    _is_spatial,
    _lanes,
    annotated_block,
    inline_epilogues,
    schedule_root_stages,
)

#: Block annotation naming hwcomp's blocked convolutions ("conv" or "depthwise").
CONV_ATTR = "hwcomp.blocked_conv"


@dataclasses.dataclass(frozen=True)
class ConvKnobs:
    """Knobs of :class:`BlockedConv`: ``reg_n`` output pixels per register tile (0 = chosen from
    the vector registers and the row length), ``unroll_kw`` unrolls the kernel-column loop,
    ``pad_rows``: output rows per task of a padded depthwise conv, whose padded input is computed
    per task (0 = a padding pass of its own), ``k_outer``: input-channel blocks outside the output
    pixels (None = where :func:`weights_once` says so), ``rows_outer``: tasks of output rows over all
    output-channel blocks (None = where :func:`inputs_once` says so)."""

    reg_n: int = 0
    unroll_kw: bool = False
    pad_rows: int = 8
    k_outer: bool | None = None
    rows_outer: bool | None = None


def _pad(data, padding):
    pt, pl, pb, pr = padding
    if not any(padding):
        return data
    return topi.nn.pad(data, [0, 0, pt, pl, 0], [0, 0, pb, pr, 0], name="data_pad")


def _out_size(size, k, stride, dilation, before, after):
    return (size + before + after - (k - 1) * dilation - 1) // stride + 1


def conv2d_nchwc(data: te.Tensor, kernel: te.Tensor, strides, padding, dilation, groups: int = 1) -> te.Tensor:
    """``data [N, IC/xi, H, W, xi]`` ⊛ ``kernel [OC/xo, IC/groups/xi, KH, KW, xi, xo]`` → ``[N, OC/xo, OH, OW, xo]``.

    ``padding`` is (top, left, bottom, right). With ``groups`` > 1 every group's input and output
    channels are whole blocks (RegNet's 8-wide groups in blocks of 8): output block ``o`` reads the
    input blocks of its group only. Input-channel blocks are reduced outermost, the ``xi`` channels
    of a block innermost (a broadcast each), matching the schedule's loop order. A single input
    block may be wider than the kernel's ``xi``: only its first ``xi`` channels are read (16 real
    channels in a 32-channel block reduce over 16, not over 16 zeros more).
    """
    n, icc, h, w, xi = (int(d) for d in data.shape)
    occ, icc_k, kh, kw, xi_k, xo = (int(d) for d in kernel.shape)
    partial = icc == 1 and groups == 1 and xi_k < xi
    if icc % groups or occ % groups or icc_k != icc // groups or (xi != xi_k and not partial):
        raise ValueError(f"conv2d_nchwc: data {data.shape}, kernel {kernel.shape} and groups={groups} disagree")
    xi = xi_k
    out_per_group = occ // groups
    sh, sw = strides
    dh, dw = dilation
    oh = _out_size(h, kh, sh, dh, padding[0], padding[2])
    ow = _out_size(w, kw, sw, dw, padding[1], padding[3])
    padded = _pad(data, padding)
    rc = te.reduce_axis((0, icc_k), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    ri = te.reduce_axis((0, xi), "ri")

    def block_of(o, r):
        return r if groups == 1 else o // out_per_group * icc_k + r

    return te.compute(
        (n, occ, oh, ow, xo),
        lambda b, o, y, x, c: te.sum(
            padded[b, block_of(o, rc), y * sh + ry * dh, x * sw + rx * dw, ri] * kernel[o, rc, ry, rx, ri, c],
            axis=[rc, ry, rx, ri]),
        name="conv2d_nchwc", attrs={CONV_ATTR: "conv"})


def depthwise_nchwc(data: te.Tensor, kernel: te.Tensor, strides, padding, dilation) -> te.Tensor:
    """Depthwise: ``data [N, C/x, H, W, x]``, ``kernel [C/x, KH, KW, x]`` → ``[N, C/x, OH, OW, x]``."""
    n, cc, h, w, x = (int(d) for d in data.shape)
    cc_k, kh, kw, x_k = (int(d) for d in kernel.shape)
    if (cc, x) != (cc_k, x_k):
        raise ValueError(f"depthwise_nchwc: data {data.shape} and kernel {kernel.shape} disagree")
    sh, sw = strides
    dh, dw = dilation
    oh = _out_size(h, kh, sh, dh, padding[0], padding[2])
    ow = _out_size(w, kw, sw, dw, padding[1], padding[3])
    padded = _pad(data, padding)
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    return te.compute(
        (n, cc, oh, ow, x),
        lambda b, c, y, xx, v: te.sum(
            padded[b, c, y * sh + ry * dh, xx * sw + rx * dw, v] * kernel[c, ry, rx, v], axis=[ry, rx]),
        name="depthwise_nchwc", attrs={CONV_ATTR: "depthwise"})


def weights_once(tasks: int, cores: int, pixels: int, block: int, kernel_1x1: bool) -> bool:
    """Whether a convolution should run its input-channel blocks outside its output pixels, so
    each task (batch × output-channel block) streams its weights once, every slice used for all
    its pixels, into an accumulator of ``pixels × block`` floats in cache; the default order
    re-reads all of a block's weights per output row, and the first row waits on memory for them.
    Measured on an AVX-512 Xeon (2 threads, weights cold as in a model): ResNet's 3x3 convs at
    7x7/14x14/28x28 1.08-1.11x faster, 1x1 at 7x7 1.09x; 1x1 at 14x14 no better, so not taken.
    Needs two tasks per core (the row loop no longer splits the work) and at most 512 KB of
    accumulators."""
    return tasks >= 2 * cores and pixels * block * 4 <= 512 * 1024 and (not kernel_1x1 or pixels <= 49)


#: Weights a task of output rows re-reads per row, at most: they must stay in L2 (:func:`inputs_once`,
#: and the int8 convs' ``int8_conv.int8_rows_outer``).
ROWS_OUTER_WEIGHT_CAP = 640 * 1024


def inputs_once(input_bytes: int, weight_bytes: int, row_tasks: int, cores: int) -> bool:
    """Whether a convolution's tasks should be output rows, each over every output-channel block,
    rather than (block, row) pairs. By blocks, the threads split the blocks and each reads the whole
    input once per block; by rows, each input row is read once from memory and the weights, all read
    per row, come from L2. So: rows where the input outweighs the weights and the weights stay in
    L2. Measured on an AVX-512 Xeon (2 MB L2, 2 threads, operands cold as in a model): 1x1 256->512
    stride 2 at 56x56 1.22x, 256->64 at 56x56 1.10x, 64->256 at 56x56 1.12x, 512->256 at 28x28
    1.07x, 3x3 128->128 stride 2 at 56x56 1.05x (so before :func:`weights_once`); where the weights
    outweigh the input it loses (3x3 128->128 at 28x28 0.87x, 1x1 1024->256 at 14x14 0.89x). The
    640 KB cap is below the L2 of current x86 cores but above a Zen 3's 512 KB: unmeasured there.
    Needs two row tasks per core."""
    return input_bytes >= weight_bytes and weight_bytes <= ROWS_OUTER_WEIGHT_CAP and row_tasks >= 2 * cores


def choose_reg_n(ow: int, vectors: int, registers: int = 16, accumulators: int | None = None) -> int:
    """Output pixels per register tile. At most 8, and ``registers - 4`` accumulator registers (the
    broadcast input, the weight vectors and LLVM's temporaries need the rest: 7 pixels x 2 vectors
    on AVX2 spilled and ran 1.6x slower than 4) or ``accumulators`` where given, at least 3 (fewer
    leaves the FMA units idle); among those the tile that wastes the fewest pixels in the last tile
    of a row, the longer on a tie (ResNet's 7-wide rows: 4+3 measured faster than 6+1)."""
    acc = registers - 4 if accumulators is None else accumulators
    most = max(1, min(ow, 8, acc // max(vectors, 1)))
    least = min(3, most)
    return min(range(least, most + 1), key=lambda n: (-(-ow // n) * n, -n))


def _input_bytes(sch: s_tir.Schedule, main) -> int:
    """Bytes of the (possibly padded) activation a blocked convolution reads: its 5-D operand."""
    sizes = [math.prod(_const_int(d) or 0 for d in r.source.shape) * r.source.dtype.bits // 8
             for r in sch.get(main).reads if len(r.source.shape) == 5]
    return max(sizes, default=0)


class BlockedConv(_CPURule):
    """Schedule a fused function built around one :data:`CONV_ATTR` block (the NeoCPU schedule)."""

    def __init__(self, vector_bits: int, knobs: ConvKnobs | None = None, registers: int = 16):
        super().__init__(vector_bits)
        self.knobs = knobs or ConvKnobs()
        self.registers = registers

    def _apply(self, func, target):
        sch = s_tir.Schedule(func)
        blocks, main = annotated_block(sch, CONV_ATTR)
        if main is None:
            return None
        kind = str(sch.get(main).annotations[CONV_ATTR])
        # Prologues without a condition fold into the loads; padding stays a stage of its own
        # (an if_then_else under the vector loop would scalarize it).
        pad = None
        for b in blocks:
            if b == main or not _is_spatial(sch, b) or not sch.get_consumers(b):
                continue
            if "if_then_else" in str(sch.get(b).body):
                pad = b if any(sch.get(c).same_as(sch.get(main)) for c in sch.get_consumers(b)) else pad
                continue
            try:
                sch.compute_inline(b)
            except s_tir.ScheduleError:
                pass

        loops = sch.get_loops(main)
        if kind == "conv":
            n, oc, oh, ow, ob, rc, ry, rx, ri = loops
        else:
            n, oc, oh, ow, ob, ry, rx = loops
            rc = ri = None
        ow_ext = _const_int(sch.get(ow).extent)
        xo = _const_int(sch.get(ob).extent)
        lanes = _lanes(self.vector_bits, sch.get(main).writes[0].source.dtype.bits)
        vectors = max(1, -(-xo // lanes))
        reg_n = self.knobs.reg_n or choose_reg_n(ow_ext, vectors, self.registers)
        reg_n = min(reg_n, ow_ext)
        ow_o, ow_i = sch.split(ow, [None, reg_n])
        # Depthwise: the padded input is computed per task of output rows, in cache, instead of a
        # pass of its own over memory (a depthwise conv does 9 FMAs per input value: the extra pass
        # cost as much as the convolution). A task's rows are padded once each, their halo again.
        oh_i = None
        if kind == "depthwise" and pad is not None and self.knobs.pad_rows:
            oh, oh_i = sch.split(oh, [None, min(self.knobs.pad_rows, _const_int(sch.get(oh).extent))])
        # The task order (a knob, or where the heuristics' measurements say)
        k_outer = rows_outer = False
        if kind == "conv":
            e_n, e_oc, e_oh, e_rc, e_ry, e_rx, e_ri = (_const_int(sch.get(lp).extent)
                                                       for lp in (n, oc, oh, rc, ry, rx, ri))
            cores = int(target.attrs.get("num-cores", 1))
            weight_bytes = e_oc * e_rc * e_ry * e_rx * e_ri * xo * 4
            rows_outer = self.knobs.rows_outer if self.knobs.rows_outer is not None else \
                self.knobs.k_outer is not True and inputs_once(_input_bytes(sch, main), weight_bytes, e_n * e_oh, cores)
            if not rows_outer:
                k_outer = self.knobs.k_outer if self.knobs.k_outer is not None else \
                    weights_once(e_n * e_oc, cores, e_oh * ow_ext, xo, e_ry * e_rx == 1)
        if k_outer:
            sch.reorder(n, oc, rc, oh, ow_o, ry, rx, ri, ow_i, ob)
        elif rows_outer:
            sch.reorder(n, oh, oc, ow_o, rc, ry, rx, ri, ow_i, ob)
        elif kind == "conv":
            sch.reorder(n, oc, oh, ow_o, rc, ry, rx, ri, ow_i, ob)
        else:
            sch.reorder(n, oc, oh, *([oh_i] if oh_i is not None else []), ow_o, ry, rx, ow_i, ob)

        # An epilogue that spreads the result over a larger tensor (a squeeze-and-excitation gate
        # fused after its last 1x1 conv) stays a stage of its own: TVM 0.27 answers its
        # reverse_compute_inline with an InternalError, not a ScheduleError.
        broadcast = _broadcasts_result(sch, main)
        cw = sch.cache_write(main, 0, "local")
        if k_outer:
            par = sch.fuse(n, oc)
            sch.reverse_compute_at(cw, par, preserve_unit_loops=True)
        else:
            sch.reverse_compute_at(cw, ow_o, preserve_unit_loops=True)
        if not broadcast:
            inline_epilogues(sch, cw)
        sch.unroll(ow_i)
        sch.vectorize(ob)
        if self.knobs.unroll_kw:
            sch.unroll(rx)
        cw_loops = sch.get_loops(cw)
        sch.vectorize(cw_loops[-1])
        if len(cw_loops) > 5:
            sch.unroll(cw_loops[-2])
        if rows_outer:
            par = sch.fuse(n, oh)
        elif not k_outer:
            par = sch.fuse(n, oc, oh)
        sch.parallel(par)
        sch.decompose_reduction(main, rc if rc is not None else ry)
        if oh_i is not None:
            sch.compute_at(pad, par, preserve_unit_loops=True)
            pad_loops = sch.get_loops(pad)
            sch.vectorize(pad_loops[-1])

        schedule_root_stages(sch, par, self.vector_bits)
        if k_outer:
            return with_slice_prefetch(sch, par, main, rc, [ow_o, ry, rx])
        if kind == "conv" and not rows_outer:
            return with_block_prefetch(sch, par, main, rc, e_oc, e_oh)
        return sch
