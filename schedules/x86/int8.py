"""x86 int8 dense kernels: AVX2 (``vpmaddwd``) and AVX-512 VNNI (``vpdpbusd``).

AVX2 (runs on this project's AMD Zen hosts): there is no int8 dot product. ``vpmaddubsw``
(u8 x s8 → s16) saturates when two products add up past 32767, so this path is the exact one:
both operands are sign- (int8) or zero- (uint8) extended to s16 and ``vpmaddwd`` multiplies 16
s16 pairs and adds adjacent products into 8 s32 lanes — no overflow for any int8/uint8 input.
Weights are packed ``[N/8, K/2, 8, 2]`` (one 16-byte row = 8 output columns x 2 k, widened with
``vpmovsxbw``); two consecutive activations are widened and broadcast as one 32-bit lane. On
Zen 1 ``vpmaddubsw`` and ``vpmaddwd`` issue on the same single FP0 pipe, so the u8s8 pair
(``vpmaddubsw`` + ``vpmaddwd`` by ones) would cost the same two FP0 µops per 32 MACs as
``vpmaddwd`` alone costs per 16 MACs: the exact path loses nothing there.

VNNI (``x86-avx512-vnni``): weights packed ``[N/16, K/4, 16, 4]`` (64 bytes = one zmm), activations
uint8 (symmetric int8 codes are stored with zero point 128; the compensation ``-128 * sum_k W``
is folded into the int32 bias at compile time), ``vpdpbusd`` accumulates 16 x 4 products per
instruction. TVM's own ``dot_16x4_vnni`` intrinsic passes ``<16 x i32>`` operands where LLVM 22's
``llvm.x86.avx512.vpdpbusd.512`` takes ``<64 x i8>``, which fails LLVM verification; hwcomp
registers a corrected intrinsic under its own name (TVM's registry entry is not touched).
"""

from __future__ import annotations

from tvm.script import tirx as T

from hwcomp.quantize.kernels import (
    KernelProvider,
    cpu_dot_desc,
    layout_fits,
    register_intrin,
    schedule_blocked_dense,
)

AVX2_S8 = "hwcomp_x86_avx2_s8s8s32_8x2"
AVX2_U8 = "hwcomp_x86_avx2_u8s8s32_8x2"
VNNI_U8 = "hwcomp_x86_vnni_u8s8s32_16x4"


def _avx2_intrin(a_dtype: str):
    desc = cpu_dot_desc(a_dtype, 8, 2)

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), a_dtype, offset_factor=1), B: T.Buffer((8, 2), "int8", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1, scope="local")):
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            a_pair = T.reinterpret(T.cast(A.vload([0], a_dtype + "x2"), "int16x2"), dtype="int32")
            a16 = T.reinterpret(T.broadcast(a_pair, 8), dtype="int16x16")
            b16 = T.cast(B.vload([0, 0], "int8x16"), "int16x16")
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], "int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a16, b16, dtype="int32x8")

    return desc, impl


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
    register_intrin(AVX2_S8, *_avx2_intrin("int8"))
    register_intrin(AVX2_U8, *_avx2_intrin("uint8"))
    register_intrin(VNNI_U8, cpu_dot_desc("uint8", 16, 4), _vnni_impl)


class X86Int8Provider(KernelProvider):
    """``vnni`` targets: VNNI kernels (uint8 activations); others with AVX2: the ``vpmaddwd`` path."""

    def __init__(self, target):
        super().__init__(target)
        self.vnni = target.int8_dot in ("vnni",)
        self.avx2 = target.vector_bits >= 256
        self.name = "x86-vnni" if self.vnni else "x86-avx2" if self.avx2 else "generic"
        self.act_dtypes = ("uint8",) if self.vnni else ("int8", "uint8")
        register_intrinsics()

    def dense_layout(self, m: int, k: int, n: int) -> str:
        if self.vnni and layout_fits("vnni", n, k):
            return "vnni"
        if self.avx2 and not self.vnni and layout_fits("avx2", n, k):
            return "avx2"
        return "nk"

    def schedule_dense(self, func, layout: str, m: int, k: int, n: int):
        if layout == "vnni":
            return schedule_blocked_dense(func, 16, 4, VNNI_U8, mr_prefs=(4, 2, 1), nrv_prefs=(2, 1))
        if layout == "avx2":
            a_dtype = str(func.params[0].dtype)
            return schedule_blocked_dense(func, 8, 2, AVX2_U8 if a_dtype == "uint8" else AVX2_S8,
                                          mr_prefs=(4, 3, 2, 1), nrv_prefs=(3, 2, 1))
        return None

    def describe(self) -> str:
        return {"x86-vnni": "AVX-512 VNNI vpdpbusd, weights [N/16, K/4, 16, 4]",
                "x86-avx2": "AVX2 vpmaddwd (s16 x s16 -> s32, exact), weights [N/8, K/2, 8, 2]"}.get(
            self.name, "generic")
