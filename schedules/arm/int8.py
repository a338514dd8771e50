"""AArch64 int8 dense kernels: ``sdot`` on ``+dotprod`` targets, a NEON ``smull``/``sadalp`` fallback.

Both read weights packed ``[N/4, K/4, 4, 4]`` (16 bytes = 4 output columns x 4 k, one q register)
and int8 activations (zero point 0, or affine with the zero point folded into the int32 bias).

* ``sdot`` (Armv8.2 dot product, Cortex-A55/A76/A78, Neoverse): ``sdot v.4s, w.16b, a.4b[]``
  adds 4 int8 products into each of 4 int32 lanes — 16 MACs per instruction;
* NEON fallback (Cortex-A72 class): ``smull`` (int8 x int8 → int16, never overflows) on the low
  and high halves, pairwise widening adds (``saddlp``) and ``addp`` give the same 4 lanes.

The tile is ``mr`` rows x ``nrv`` q-registers of columns, accumulated in registers with the
epilogue (requantize / dequantize + activation) applied before the store, as on x86.
"""

from __future__ import annotations

from hwcomp.schedules.int8_base import (
    ConvDot,
    KernelProvider,
    cpu_dot_desc,
    layout_fits,
    register_intrin,
    schedule_blocked_dense,
)
from tvm.script import tirx as T

SDOT = "hwcomp_arm_sdot_s8s8s32_4x4"
NEON = "hwcomp_arm_neon_s8s8s32_4x4"


@T.prim_func(s_tir=True)
def _sdot_impl(A: T.Buffer((4,), "int8", offset_factor=1), B: T.Buffer((4, 4), "int8", offset_factor=1),
               C: T.Buffer((4,), "int32", offset_factor=1, scope="local")):
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        a32 = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
        a16 = T.reinterpret(T.broadcast(a32, 4), dtype="int8x16")
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
            C.vload([0], "int32x4"), B.vload([0, 0], "int8x16"), a16, dtype="int32x4")


@T.prim_func(s_tir=True)
def _neon_impl(A: T.Buffer((4,), "int8", offset_factor=1), B: T.Buffer((4, 4), "int8", offset_factor=1),
               C: T.Buffer((4,), "int32", offset_factor=1, scope="local")):
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        a32 = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
        a8 = T.reinterpret(T.broadcast(a32, 2), dtype="int8x8")
        b = B.vload([0, 0], dtype="int8x16")
        lo = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                                     a8, T.vectorlow(b, dtype="int8x8"), dtype="int16x8")
        hi = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                                     a8, T.vectorhigh(b, dtype="int8x8"), dtype="int16x8")
        lo32 = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"),
                                       lo, dtype="int32x4")
        hi32 = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"),
                                       hi, dtype="int32x4")
        C[T.ramp(T.int32(0), 1, 4)] = C.vload([0], "int32x4") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.addp.v4i32"), lo32, hi32, dtype="int32x4")


def register_intrinsics() -> None:
    desc = cpu_dot_desc("int8", 4, 4)
    register_intrin(SDOT, desc, _sdot_impl)
    register_intrin(NEON, desc, _neon_impl)


class ArmInt8Provider(KernelProvider):
    """``sdot`` where the target has ``+dotprod`` (``int8_dot = "sdot"``), NEON otherwise."""

    act_dtypes = ("int8",)

    def __init__(self, target):
        super().__init__(target)
        self.sdot = target.int8_dot == "sdot"
        self.name = "arm-sdot" if self.sdot else "arm-neon"
        register_intrinsics()

    def dense_layout(self, m: int, k: int, n: int, w_absmax: int = 127) -> str:
        return "sdot" if layout_fits("sdot", n, k) else "nk"

    def schedule_dense(self, func, layout: str, m: int, k: int, n: int):
        if layout != "sdot":
            return None
        return schedule_blocked_dense(func, 4, 4, SDOT if self.sdot else NEON, mr_prefs=(4, 2, 1),
                                      nrv_prefs=(4, 2, 1))

    def conv_dot(self, w_absmax: int = 127, act_zero_point: int = 0):
        return ConvDot(4, 4, SDOT if self.sdot else NEON)

    def describe(self) -> str:
        return ("NEON sdot (int8 dot product), weights [N/4, K/4, 4, 4]" if self.sdot
                else "NEON smull/saddlp fallback, weights [N/4, K/4, 4, 4]")
