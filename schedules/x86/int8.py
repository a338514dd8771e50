"""x86 int8 dense kernels: AVX2 (``vpmaddubsw`` or ``vpmaddwd``) and AVX-512 VNNI (``vpdpbusd``).

AVX2 (this project's AMD Zen hosts) has no int8 dot product; two paths:

* ``avx2u8`` (default on AVX2): ``vpmaddubsw`` multiplies 32 u8 activations by s8 weights and adds
  adjacent pairs into s16, ``vpmaddwd`` by ones widens to 8 s32 lanes. A pair saturates past 32767,
  so weights are quantized to 7 bits (|w| ≤ 64: 2 · 255 · 64 < 32767) — ``QuantConfig.reduce_range``,
  the same trade ONNX Runtime and PyTorch offer — and the result is exact. Weights packed
  ``[N/8, K/4, 8, 4]`` (32 bytes = 8 outputs x 4 k), four activations broadcast as one 32-bit lane.
  Measured on 128x768x3072 (2 Zen-1 cores): 80.8 GOP/s vs 71.7 for the s16 path — both paths do
  the same multiplies per cycle; this one needs no weight widening.
* ``avx2``: full 8-bit weights. Both operands are widened to s16 and ``vpmaddwd`` multiplies 16
  s16 pairs into 8 s32 lanes — exact for any int8/uint8 input. Weights packed ``[N/8, K/2, 8, 2]``
  (16 bytes, widened with ``vpmovsxbw``); two activations broadcast as one 32-bit lane. Used when
  the weights do not fit 7 bits (``reduce_range=False``, pre-quantized QDQ weights).

Convolutions (``hwcomp.quantize.int8_conv``, blocked NCHW[x]c) on AVX2 with 7-bit weights use a
faster step, ``hwcomp_x86_avx2_u8s7s32_8x2x4_sat``: two ``vpmaddubsw`` (8 bytes of one pixel per
output lane, as two 4-byte halves) whose exact s16 pair sums are added with ``vpaddsw`` before one
``vpmaddwd``. On Zen 3 ``vpmaddwd`` is the bottleneck of the 8x4 step; halving it measured
350-390 GOP/s on ResNet's 3x3 convs against 160 (2 cores), past the 8x4 step's ceiling
(``bench/peak.py``: 205). The s16 add saturates only where four products of one lane and one
8-byte group sum past ±32767 (2 x 2 x 255 x 64 can reach 65280): the same trade as ONNX Runtime's
MLAS u8s8 kernels (whose single ``vpmaddubsw`` already saturates at 8-bit weights), much rarer
here because each pair is exact. ``hwcomp.quantize.int8_conv.reference_conv`` models it bit for bit.

VNNI (``x86-avx512-vnni``): weights packed ``[N/16, K/4, 16, 4]`` (64 bytes = one zmm), activations
uint8 (symmetric int8 codes are stored with zero point 128; the compensation ``-128 * sum_k W``
is folded into the int32 bias at compile time), ``vpdpbusd`` accumulates 16 x 4 products per
instruction. TVM's own ``dot_16x4_vnni`` intrinsic passes ``<16 x i32>`` operands where LLVM 22's
``llvm.x86.avx512.vpdpbusd.512`` takes ``<64 x i8>``, which fails LLVM verification; hwcomp
registers a corrected intrinsic under its own name (TVM's registry entry is not touched).
"""

from __future__ import annotations

from hwcomp.schedules.int8_base import (
    ConvDot,
    KernelProvider,
    cpu_dot_desc,
    fold_width,
    layout_fits,
    register_intrin,
    schedule_blocked_dense,
)
from tvm.script import tirx as T

AVX2_S8 = "hwcomp_x86_avx2_s8s8s32_8x2"
AVX2_U8 = "hwcomp_x86_avx2_u8s8s32_8x2"
AVX2_U8S7 = "hwcomp_x86_avx2_u8s7s32_8x4"
AVX2_U8S7_SAT = "hwcomp_x86_avx2_u8s7s32_8x2x4_sat"
VNNI_U8 = "hwcomp_x86_vnni_u8s8s32_16x4"
AVX2_S16 = "hwcomp_x86_avx2_s16s16s32_8x2"
AVX512_S16 = "hwcomp_x86_avx512_s16s16s32_16x2"


def _pmaddwd_intrin(a_dtype: str, b_dtype: str = "int8", lanes: int = 8, pmadd: str = "llvm.x86.avx2.pmadd.wd"):
    """``C[i] += A[0] B[i, 0] + A[1] B[i, 1]`` into int32 with ``vpmaddwd`` (with VNNI LLVM folds the
    add into ``vpdpwssd``): the pair of ``A`` broadcast as one 32-bit lane, 8-bit operands widened to
    int16 first. int8/uint8 ``A`` with int8 ``B``: the AVX2 dense kernels' full-range path; int16
    both: the int8 Winograd's products (exact transformed inputs times the transformed weights)."""
    wide = f"int16x{2 * lanes}"

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), a_dtype, offset_factor=1), B: T.Buffer((lanes, 2), b_dtype, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")):
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            a_pair = T.reinterpret(T.cast(A.vload([0], a_dtype + "x2"), "int16x2"), dtype="int32")
            a16 = T.reinterpret(T.broadcast(a_pair, lanes), dtype=wide)
            b16 = T.cast(B.vload([0, 0], f"{b_dtype}x{2 * lanes}"), wide)
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], f"int32x{lanes}") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(pmadd), a16, b16, dtype=f"int32x{lanes}")

    return cpu_dot_desc(a_dtype, lanes, 2, b_dtype), impl


@T.prim_func(s_tir=True)
def _avx2_u8s7_impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((8, 4), "int8", offset_factor=1),
                    C: T.Buffer((8,), "int32", offset_factor=1, scope="local")):
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        a32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a_bytes = T.reinterpret(T.broadcast(a32, 8), dtype="int8x32")  # read as unsigned by the instruction
        pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a_bytes,
                                        B.vload([0, 0], "int8x32"), dtype="int16x16")
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], "int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs, T.broadcast(T.int16(1), 16), dtype="int32x8")


def _pairs_desc():
    """``C[i] += sum_{h, r} A[4h + r] B[h, i, r]``: two 4-byte halves per lane, weights ``[2, 8, 4]``."""

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((8,), "uint8", offset_factor=1), B: T.Buffer((2, 8, 4), "int8", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1, scope="local")):
        with T.sblock("root"):
            T.reads(C[0:8], A[0:8], B[0:2, 0:8, 0:4])
            T.writes(C[0:8])
            for i, h, r in T.grid(8, 2, 4):
                with T.sblock("update"):
                    vi, vh, vr = T.axis.remap("SRR", [i, h, r])
                    C[vi] = C[vi] + T.cast(A[vh * 4 + vr], "int32") * T.cast(B[vh, vi, vr], "int32")

    return desc


@T.prim_func(s_tir=True)
def _avx2_u8s7_sat_impl(A: T.Buffer((8,), "uint8", offset_factor=1), B: T.Buffer((2, 8, 4), "int8", offset_factor=1),
                        C: T.Buffer((8,), "int32", offset_factor=1, scope="local")):
    with T.sblock("root"):
        T.reads(C[0:8], A[0:8], B[0:2, 0:8, 0:4])
        T.writes(C[0:8])
        a0 = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 8), dtype="int8x32")
        a1 = T.reinterpret(T.broadcast(T.reinterpret(A.vload([4], "uint8x4"), dtype="int32"), 8), dtype="int8x32")
        p0 = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a0,
                                     B.vload([0, 0, 0], "int8x32"), dtype="int16x16")
        p1 = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a1,
                                     B.vload([1, 0, 0], "int8x32"), dtype="int16x16")
        s = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.sadd.sat"), p0, p1, dtype="int16x16")
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], "int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), s, T.broadcast(T.int16(1), 16), dtype="int32x8")


@T.prim_func(s_tir=True)
def _vnni_impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
               C: T.Buffer((16,), "int32", offset_factor=1, scope="local")):
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        a32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a_bytes = T.reinterpret(T.broadcast(a32, 16), dtype="int8x64")  # <64 x i8>, as LLVM 22 wants
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], "int32x16"), a_bytes, B.vload([0, 0], "int8x64"), dtype="int32x16")


def register_intrinsics() -> None:
    register_intrin(AVX2_S16, *_pmaddwd_intrin("int16", "int16"))
    register_intrin(AVX512_S16, *_pmaddwd_intrin("int16", "int16", 16, "llvm.x86.avx512.pmaddw.d.512"))
    register_intrin(AVX2_S8, *_pmaddwd_intrin("int8"))
    register_intrin(AVX2_U8, *_pmaddwd_intrin("uint8"))
    register_intrin(AVX2_U8S7, cpu_dot_desc("uint8", 8, 4), _avx2_u8s7_impl)
    register_intrin(VNNI_U8, cpu_dot_desc("uint8", 16, 4), _vnni_impl)
    register_intrin(AVX2_U8S7_SAT, _pairs_desc(), _avx2_u8s7_sat_impl)


def _llvm_has_amx(target) -> bool:
    """Whether LLVM emits AMX int8 tile instructions for ``target`` (its mcpu or mattr)."""
    if target is None or target.arch != "x86_64":
        return False
    from tvm.target import codegen

    return bool(codegen.llvm_cpu_has_features(["amx-tile", "amx-int8"], target.tvm_target()))


class X86Int8Provider(KernelProvider):
    """``vnni`` targets: VNNI kernels; others with AVX2: ``vpmaddubsw`` (7-bit weights) or
    ``vpmaddwd``. Activations are uint8 on both (symmetric int8 codes are stored with zero point
    128, the compensation folded into the int32 bias)."""

    def __init__(self, target):
        super().__init__(target)
        self.vnni = target.int8_dot in ("vnni",)
        self.avx2 = target.vector_bits >= 256
        self.name = "x86-vnni" if self.vnni else "x86-avx2" if self.avx2 else "generic"
        self.act_dtypes = ("uint8",) if self.vnni or self.avx2 else ("int8", "uint8")
        self.reduce_range_pays = self.avx2 and not self.vnni
        self.conv_requant_in_float = True
        self.lrint_requant = True
        self.amx = self.vnni and _llvm_has_amx(target)
        register_intrinsics()

    def dense_layout(self, m: int, k: int, n: int, w_absmax: int = 127) -> str:
        if self.vnni and layout_fits("vnni", n, k):
            return "vnni"
        if self.avx2 and not self.vnni and w_absmax <= 64 and layout_fits("avx2u8", n, k):
            return "avx2u8"
        if self.avx2 and not self.vnni and layout_fits("avx2", n, k):
            return "avx2"
        return "nk"

    def schedule_dense(self, func, layout: str, m: int, k: int, n: int):
        if layout == "vnni":
            if self.amx:
                from .amx import schedule_dense_amx

                scheduled = schedule_dense_amx(func)  # None where no tile fits: VNNI below
                if scheduled is not None:
                    return scheduled
            return schedule_blocked_dense(func, 16, 4, VNNI_U8, mr_prefs=(4, 2, 1), nrv_prefs=(2, 1))
        if layout == "avx2u8":
            return schedule_blocked_dense(func, 8, 4, AVX2_U8S7, mr_prefs=(4, 3, 2, 1), nrv_prefs=(3, 2, 1))
        if layout == "avx2":
            a_dtype = str(func.params[0].dtype)
            return schedule_blocked_dense(func, 8, 2, AVX2_U8 if a_dtype == "uint8" else AVX2_S8,
                                          mr_prefs=(4, 3, 2, 1), nrv_prefs=(3, 2, 1))
        return None

    def conv_dot(self, w_absmax: int = 127, act_zero_point: int = 0):
        if self.vnni:
            return ConvDot(16, 4, VNNI_U8)
        if self.avx2:
            if w_absmax > 64:
                return ConvDot(8, 2, AVX2_U8)
            # 7-bit weights on post-ReLU codes (zero point 0, mostly small): two exact vpmaddubsw
            # pair sums added in int16 (saturating) before one vpmaddwd, this CPU class's
            # bottleneck (module docstring). Codes centred on a zero point (signed values stored
            # as uint8) saturate far more often there: the exact 8x4 step.
            return ConvDot(8, 8, AVX2_U8S7_SAT, 2) if act_zero_point == 0 else ConvDot(8, 4, AVX2_U8S7)
        return None

    def winograd_dot(self):
        # AVX-512 (VNNI targets): 16 lanes, vpdpwssd; AVX2: 8 lanes, vpmaddwd + vpaddd — one
        # multiply uop per 16 products, as the u8 x s7 step's two per 32 (module docstring).
        if self.vnni:
            return ConvDot(16, 2, AVX512_S16)
        if self.avx2:
            return ConvDot(8, 2, AVX2_S16)
        return None

    def _amx_plan(self, ow: int, kw: int, dw: int, xi: int, dot):
        """``schedules/x86/amx.py``'s plan for this conv, or None (the VNNI kernel)."""
        if not (self.amx and dot.intrin == VNNI_U8):
            return None
        from .amx import amx_conv_plan

        return amx_conv_plan(ow, kw, dw, xi)

    def conv_reg_n(self, ow: int, xi: int, dot, kw: int = 1, dw: int = 1) -> int:
        plan = self._amx_plan(ow, kw, dw, xi, dot)
        if plan is not None:  # pixel tiles of whole AMX tiles
            return plan[0] * plan[1]
        if dot.intrin == AVX2_U8S7_SAT:
            from hwcomp.schedules.cpu.int8_conv import int8_reg_n

            # 14 of the 16 ymm registers as accumulators (7 pixels x 16 channels): LLVM spills the
            # step's temporaries, but this step waits on the multiply ports, not the loads, and a
            # 7-wide tile fits ResNet's 7-, 14-, 28- and 56-wide rows whole. Alone, 2 Zen 4 cores,
            # against the 5-pixel cap: 3x3 512 ch at 7x7 1.08-1.14x, 3x3 stride 2 28 -> 14 1.22x,
            # 1x1 2048 -> 512 at 7x7 1.13x, 1x1 at 28x28 and 56x56 unchanged. Not the exact 8x4
            # step (ResNet's stem, 7-pixel tiles 0.92x) nor the Winograd int16 products (0.80x).
            return int8_reg_n(ow, 16 // dot.lanes, 16, accumulators=14)
        return super().conv_reg_n(ow, xi, dot, kw, dw)

    def conv_weight_taps(self, ow: int, kw: int, dw: int, xi: int, dot) -> int:
        plan = self._amx_plan(ow, kw, dw, xi, dot)
        return kw if plan is None else plan[2]

    def conv_fold(self, channels: int, kw: int, dw: int, dot):
        if self.amx and dot.intrin == VNNI_U8:  # AMX reads a narrow conv's kernel rows as tile rows
            return None
        if dot.intrin == AVX2_U8S7_SAT:
            # Folded, every byte of the saturating step's int16 sums is an image code (blocked, the
            # channels' padding left two real products per sum, which cannot saturate): the exact
            # 4-byte step, on the same 7-bit weights. ResNet's stem alone: 0.67 ms against the
            # 8-byte step's 0.66 folded, 1.49 blocked.
            exact = ConvDot(8, 4, AVX2_U8S7)
            xi = fold_width(channels, kw, dw, exact.kb, blocked_kb=dot.kb)
            return (xi, exact) if xi else None
        return super().conv_fold(channels, kw, dw, dot)

    def schedule_blocked_conv(self, func, dot, depthwise: bool = False):
        if not depthwise and dot is not None and self.amx and dot.intrin == VNNI_U8:
            from .amx import schedule_conv_nchwc_int8_amx

            # None where the conv's shape or tile (conv_reg_n) does not fit: the VNNI schedule
            scheduled = schedule_conv_nchwc_int8_amx(func, self.target.vector_bits)
            if scheduled is not None:
                return scheduled
        return super().schedule_blocked_conv(func, dot, depthwise)

    def describe(self) -> str:
        if self.amx:
            return "AVX-512 VNNI vpdpbusd, weights [N/16, K/4, 16, 4]; AMX tdpbusd tiles for blocked int8 convs and Linears"
        return {"x86-vnni": "AVX-512 VNNI vpdpbusd, weights [N/16, K/4, 16, 4]",
                "x86-avx2": "AVX2 vpmaddubsw u8 x s7 (7-bit weights, exact), weights [N/8, K/4, 8, 4]; "
                            "vpmaddwd s16 x s16 for 8-bit weights, [N/8, K/2, 8, 2]"}.get(
            self.name, "generic")
