"""What every int8 kernel provider builds on, below both ``hwcomp.quantize.int8_compute`` (which picks a
provider for the target) and the per-target providers (``schedules/{x86,arm,cuda}/int8.py``): the
generic :class:`KernelProvider`, the weight layouts, the blocked conv's channel block and the rule
for folding a narrow conv's kernel rows (:func:`fold_width`), the CPU dot-product intrinsic
description and registration, and the blocked dense schedule the CPU providers tensorize.
"""

from __future__ import annotations

from typing import NamedTuple

from tvm import tirx
from tvm.script import tirx as T

#: Channel block of int8 activations between blocked int8 convolutions
#: (``hwcomp.quantize.int8_conv``'s layout NCHW[x]c).
BLOCK = 16


def in_block(channels: int, kb: int) -> int:
    """Channel block of a float tensor quantized into the blocked layout: :data:`BLOCK`, or fewer
    (a multiple of ``kb``) for narrow inputs such as an image's 3 channels."""
    return min(BLOCK, -(-channels // kb) * kb)


#: The most input bytes per pixel of a conv run with its kernel rows folded into the channels.
MAX_FOLD = 64


def fold_width(channels: int, kw: int, dw: int, kb: int, blocked_kb: int | None = None) -> int:
    """Input bytes per output pixel (``xi``, a multiple of the dot's ``kb``) of a narrow conv run
    with each kernel row's taps folded into the channels (``hwcomp.quantize.int8_conv.conv2d_folded_int8_func``), or 0
    where that reads no fewer bytes than the blocked layout's ``kw`` taps of ``in_block`` channels
    each (``blocked_kb``: the blocked layout's dot bytes, if not ``kb``). An image's 3 channels
    under a 7-tap row: 24 bytes instead of 7 x 4 (the 4-byte dots) or 7 x 8 (AVX2's 8-byte step)."""
    if kw < 2 or dw != 1:  # the folded taps must be contiguous pixels of the input row
        return 0
    folded = -(-channels * kw // kb) * kb
    return folded if folded < kw * in_block(channels, blocked_kb or kb) and folded <= MAX_FOLD else 0


class ConvDot(NamedTuple):
    """The dot step of the blocked int8 convolution: ``lanes`` int32 outputs, each reducing ``kb``
    bytes, taken as ``halves`` vectors (weights ``[halves, lanes, kb/halves]``); ``intrin`` is the
    tensor intrinsic (None: LLVM's vectorizer)."""

    lanes: int
    kb: int
    intrin: str | None
    halves: int = 1

# name: (n block, k block); "nk" is the plain [N, K] layout.
LAYOUTS = {"nk": (1, 1), "kn": (1, 1), "avx2": (8, 2), "avx2u8": (8, 4), "vnni": (16, 4), "sdot": (4, 4)}


def layout_fits(layout: str, n: int, k: int) -> bool:
    nb, kb = LAYOUTS[layout]
    return n % nb == 0 and k % kb == 0


class KernelProvider:
    """Generic provider: plain ``[N, K]`` weights, no schedule of its own (default rules apply).

    ``act_dtypes``: storage types the dense kernels accept for activations, preferred first.
    ``reduce_range_pays``: the fastest dense kernel wants 7-bit weights (AVX2 ``vpmaddubsw``).
    """

    name = "generic"
    act_dtypes: tuple[str, ...] = ("int8", "uint8")
    reduce_range_pays: bool = False
    #: Convolutions requantize through float32 (``float_requant``) rather than a 64-bit fixed-point
    #: multiply: x86 has no vector 64-bit multiply before AVX-512, and LLVM's emulation of it cost
    #: more than the dot products in MobileNet's narrow 1x1 convs.
    conv_requant_in_float: bool = False
    #: Float requantization rounds with ``llvm.lrint`` (one convert instruction) and clamps in
    #: int32 (``int8_compute.Epilogue.lrint``): LLVM CPU targets where it was measured (x86).
    lrint_requant: bool = False

    def __init__(self, target=None):
        self.target = target

    @property
    def cores(self) -> int:
        """The target's cores (1 without a target): the blocked conv's task order and row view."""
        return self.target.num_cores if self.target is not None else 1

    def dense_layout(self, m: int, k: int, n: int, w_absmax: int = 127) -> str:
        """Weight layout for an ``M x K x N`` dense whose weight codes are at most ``w_absmax``."""
        return "nk"

    def dense_weight_bits(self, k: int, n: int, bits: int = 8, reduce_range: bool | None = None) -> int:
        """Width of a ``K -> N`` dense layer's weight codes: one bit narrower than ``bits`` where
        ``reduce_range`` (default: ``reduce_range_pays``) selects a faster kernel for the shape.
        Weight layouts depend on the weight's shape only, so no row count is needed."""
        reduce = self.reduce_range_pays if reduce_range is None else reduce_range
        if reduce and bits > 2 and self.dense_layout(1, k, n, 1 << (bits - 2)) != self.dense_layout(1, k, n):
            return bits - 1
        return bits

    def schedule_dense(self, func: tirx.PrimFunc, layout: str, m: int, k: int, n: int) -> tirx.PrimFunc | None:
        return None

    def conv_dot(self, w_absmax: int = 127, act_zero_point: int = 0) -> ConvDot | None:
        """The dot step of the blocked int8 convolution (``hwcomp.quantize.int8_conv``) for weight
        codes up to ``w_absmax``: ``(int32 lanes, bytes reduced per lane, tensor intrinsic or None
        for LLVM's vectorizer)``, for activations stored with ``act_zero_point``; None: no blocked
        int8 convolution (the NCHW kernel runs)."""
        return None

    def winograd_dot(self) -> ConvDot | None:
        """The int16 pair dot of the int8 Winograd convolution's products
        (``hwcomp.quantize.int8_winograd``): ``lanes`` int32 outputs, each reducing ``kb`` = 2 int16
        pairs; None: the target's int8 3x3 convs stay direct."""
        return None

    def conv_weight_bits(self, bits: int = 8, reduce_range: bool | None = None, act_zero_point: int = 0) -> int:
        """Width of conv weight codes for activations stored with ``act_zero_point``: one bit
        narrower where that selects a faster dot (AVX2)."""
        reduce = self.reduce_range_pays if reduce_range is None else reduce_range
        if reduce and bits > 2 and (self.conv_dot(1 << (bits - 2), act_zero_point)
                                    != self.conv_dot(1 << (bits - 1), act_zero_point)):
            return bits - 1
        return bits

    def conv_reg_n(self, ow: int, xi: int, dot: ConvDot, kw: int = 1, dw: int = 1) -> int:
        """Output pixels per tile of a blocked int8 conv with output width ``ow``, ``xi`` input
        bytes per channel block, kernel width ``kw`` and dilation ``dw``: ``reg_n`` pixels x 16
        channels of int32 accumulators in vector registers."""
        from hwcomp.schedules.cpu.int8_conv import int8_reg_n

        return int8_reg_n(ow, 16 // dot.lanes, getattr(self.target, "vector_registers", 16))  # 16: int8_conv.BLOCK

    def conv_weight_taps(self, ow: int, kw: int, dw: int, xi: int, dot: ConvDot) -> int:
        """Taps per kernel row the blocked conv's weights are packed with (``int8_conv.pack_conv_weight``):
        ``kw``, or more (zero taps) where the kernel reads a row's taps as one operand."""
        return kw

    def conv_fold(self, channels: int, kw: int, dw: int, dot: ConvDot) -> tuple[int, ConvDot] | None:
        """``(xi, dot)`` for a conv on ``channels`` float-fed input channels (blocked, it would take
        ``dot``) run with its kernel rows folded into the channels
        (``int8_conv.conv2d_folded_int8_func``): ``xi`` input bytes per pixel on the dot step
        returned; None for the blocked layout. ResNet's 7x7 stem alone, 2 Zen 4 cores: AVX2
        1.49 -> 0.67 ms (from the blocked 8-byte step), VNNI 0.37 -> 0.32."""
        xi = fold_width(channels, kw, dw, dot.kb)
        return (xi, dot) if xi else None

    def schedule_blocked_conv(self, func: tirx.PrimFunc, dot: ConvDot,
                              depthwise: bool = False) -> tirx.PrimFunc:
        """Schedule a blocked int8 conv (or depthwise) PrimFunc for this target's CPU."""
        from hwcomp.schedules.cpu.int8_conv import (
            schedule_conv_nchwc_int8,
            schedule_depthwise_nchwc_int8,
        )

        bits = self.target.vector_bits if self.target is not None else 128
        if depthwise:
            return schedule_depthwise_nchwc_int8(func, bits)
        return schedule_conv_nchwc_int8(func, dot[0], dot[2], bits, self.cores)

    def schedule_batch_matmul(self, func: tirx.PrimFunc) -> tirx.PrimFunc | None:
        return None

    def has_sparse_dense(self, act: str | None) -> bool:
        """Whether :meth:`sparse_dense_func` has a kernel for this target and fused activation (the
        CPU generator's activations; a provider without a CPU kernel overrides this)."""
        return self.target is not None and act in (None, "relu", "gelu")

    def sparse_dense_func(self, m: int, k: int, n: int, block: tuple[int, int], x_dtype: str,
                          act: str | None) -> tirx.PrimFunc | None:
        """The int8 BSR kernel ``(xq, data, indices, indptr, bias_i32, deq, y_f32)`` on CPU targets
        (``schedules/cpu/bsr.py``'s generator, x86 and AArch64); None where there is none."""
        t = self.target
        if not self.has_sparse_dense(act):
            return None
        from hwcomp.schedules.bsr_spec import BsrSpec
        from hwcomp.schedules.cpu.bsr import cpu_bsr_kernel, default_knobs

        spec = BsrSpec(m, k, n, block, activation=act or "none", x_dtype=x_dtype)
        return cpu_bsr_kernel(spec, default_knobs(t.vector_bits, block, m), t.num_cores, t.vector_bits)

    def describe(self) -> str:
        return "generic int8 kernels (default schedules)"


def scheduled(func: tirx.PrimFunc) -> tirx.PrimFunc:
    return func.with_attr("tirx.is_scheduled", True)


def cpu_dot_desc(a_dtype: str, lanes: int, k: int, b_dtype: str = "int8"):
    """The description every CPU integer dot instruction matches: ``C[i] += sum_k A[k] · B[i, k]``
    for ``lanes`` int32 outputs over ``k`` elements of A (AVX2 ``vpmaddwd`` 8×2, VNNI 16×4,
    ``sdot`` 4×4; int16 ``B`` for the int8 Winograd's products)."""

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((k,), a_dtype, offset_factor=1), B: T.Buffer((lanes, k), b_dtype, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")):
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:k], B[0:lanes, 0:k])
            T.writes(C[0:lanes])
            for i in T.serial(lanes):
                for r in T.serial(k):
                    with T.sblock("update"):
                        vi, vr = T.axis.remap("SR", [i, r])
                        C[vi] = C[vi] + T.cast(A[vr], "int32") * T.cast(B[vi, vr], "int32")

    return desc


def register_intrin(name: str, desc, impl) -> str:
    """Register a tensor intrinsic under hwcomp's own name (idempotent; TVM's are left alone)."""
    from tvm.s_tir import TensorIntrin

    try:
        TensorIntrin.get(name)
    except Exception:  # noqa: BLE001 - TVM raises a plain error for unknown names
        TensorIntrin.register(name, desc, impl)
    return name


def _divisor(n: int, prefs: tuple[int, ...]) -> int:
    return next((p for p in prefs if p <= n and n % p == 0), 1)


def schedule_blocked_dense(func: tirx.PrimFunc, nb: int, kb: int, intrin: str, mr_prefs=(4, 3, 2, 1),
                           nrv_prefs=(3, 2, 1), out_lanes: int | None = None) -> tirx.PrimFunc:
    """Register-tile ``dense_func`` (blocked weight layout ``[N/nb, K/kb, nb, kb]``) and tensorize
    the ``nb x kb`` inner product with ``intrin``.

    Loop nest: ``parallel(N panels x M tiles) / K/kb / mr rows (unrolled) / nrv vectors (unrolled) /
    intrin``; the int32 accumulator tile lives in registers (local scope) and the epilogue runs on
    it before the store, so the int32 result never reaches memory.
    """
    from tvm import s_tir

    m, n = (int(v) for v in func.params[-1].shape)
    mr = _divisor(m, mr_prefs)
    nrv = _divisor(n // nb, nrv_prefs)
    sch = s_tir.Schedule(func)
    acc = sch.get_sblock("acc")
    out = sch.get_sblock("out")
    i, j, k = sch.get_loops(acc)
    jo, jv, jl = sch.split(j, [None, nrv, nb])
    io, ii = sch.split(i, [None, mr])
    ko, ki = sch.split(k, [None, kb])
    sch.reorder(jo, io, ko, ii, jv, jl, ki)
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(out, io)
    o_j = sch.get_loops(out)[-1]
    lanes = out_lanes or nb
    if (nrv * nb) % lanes == 0:
        _, o_v = sch.split(o_j, [None, lanes])
        sch.vectorize(o_v)
    par = sch.fuse(jo, io)
    sch.parallel(par)
    init = sch.decompose_reduction(acc, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(ii)
    sch.unroll(jv)
    sch.tensorize(jl, intrin)
    return scheduled(sch.mod["main"])
