"""CUDA int8 dense kernel: ``dp4a`` (4-way int8 dot product, int32 accumulate; sm_61 and later).

Weights stay ``[N, K]`` (k contiguous: four consecutive k of one column are one 32-bit word).
Block tile 32 x 32 outputs, 8 x 8 threads with a 4 x 4 register tile each; K is walked in slices
of 32 staged through shared memory (cooperative loads by all 64 threads); the innermost 4-wide
reduction is tensorized with ``__dp4a`` (hwcomp's copy of TVM's ``dp4a_s8s8s32`` / ``dp4a_u8s8s32``).
The epilogue (requantize / dequantize + activation) runs on the register tile before the store.
Shapes that do not tile (M, N, K not multiples of 32) are left to the default dlight schedules.
"""

from __future__ import annotations

from hwcomp.schedules.int8_base import KernelProvider, register_intrin, scheduled
from tvm.script import tirx as T

BM = BN = 32
BK = 32
TM = TN = 4


def _dp4a_intrin(a_dtype: str):
    """``C[0] += sum_k A[k] * B[k]`` over 4 int8 from shared memory → ``__dp4a``. The same as TVM's
    ``dp4a_s8s8s32`` (registered here under hwcomp's name: importing ``tvm.s_tir.tensor_intrin``
    registers every target's intrinsics and takes minutes)."""
    vec_a = f"{a_dtype}x4"

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), a_dtype, offset_factor=1, align=4, scope="shared"),
             B: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
             C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")):
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            for i in range(4):
                with T.sblock("update"):
                    vi = T.axis.remap("R", [i])
                    C[0] = C[0] + T.cast(A[vi], "int32") * T.cast(B[vi], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), a_dtype, offset_factor=1, align=4, scope="shared"),
             B: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
             C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")):
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            C[0] += T.call_pure_extern("__dp4a", A.vload([0], vec_a), B.vload([0], "int8x4"), T.int32(0),
                                       dtype="int32")

    return desc, impl


DP4A_S8 = "hwcomp_cuda_dp4a_s8s8s32"
DP4A_U8 = "hwcomp_cuda_dp4a_u8s8s32"


def schedule_dp4a_dense(func):
    from tvm import s_tir

    register_intrin(DP4A_S8, *_dp4a_intrin("int8"))
    register_intrin(DP4A_U8, *_dp4a_intrin("uint8"))
    a_dtype = str(func.params[0].dtype)
    sch = s_tir.Schedule(func)
    acc = sch.get_sblock("acc")
    out = sch.get_sblock("out")
    i, j, k = sch.get_loops(acc)
    bi, ti, ii = sch.split(i, [None, BM // TM, TM])
    bj, tj, jj = sch.split(j, [None, BN // TN, TN])
    ko, kt, k4 = sch.split(k, [None, BK // 4, 4])
    sch.reorder(bi, bj, ti, tj, ko, kt, ii, jj, k4)
    sch.bind(bi, "blockIdx.y")
    sch.bind(bj, "blockIdx.x")
    sch.bind(ti, "threadIdx.y")
    sch.bind(tj, "threadIdx.x")
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(out, tj)
    for idx in (0, 1):
        sh = sch.cache_read(acc, idx, "shared")
        sch.compute_at(sh, ko)
        fused = sch.fuse(*sch.get_loops(sh)[-2:])
        _, ty, tx, vec = sch.split(fused, [None, BM // TM, BN // TN, 4])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.vectorize(vec)
    sch.decompose_reduction(acc, ko)
    sch.tensorize(k4, DP4A_U8 if a_dtype == "uint8" else DP4A_S8)
    return scheduled(sch.mod["main"])


class CudaInt8Provider(KernelProvider):
    name = "cuda-dp4a"
    act_dtypes = ("int8", "uint8")

    def dense_layout(self, m: int, k: int, n: int, w_absmax: int = 127) -> str:
        return "nk"

    def schedule_dense(self, func, layout: str, m: int, k: int, n: int):
        if layout != "nk" or m % BM or n % BN or k % BK:
            return None
        return schedule_dp4a_dense(func)

    def has_sparse_dense(self, act: str | None) -> bool:
        return False  # no int8 BSR kernel on CUDA: sparse layers stay dense int8

    def describe(self) -> str:
        return "CUDA dp4a (4-way int8 dot product), 32x32 block tiles through shared memory"
