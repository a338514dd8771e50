"""BSR × dense kernel for CUDA targets.

``y[M, N] = x[M, K] @ W.T (+ bias) (then ReLU or GELU)``, weights packed as in :mod:`hwcomp.sparse_format.bsr`
(``data[nnzb, c, r]``). Thread layout: a CUDA block per (block row, M tile); ``threadIdx.x`` runs over
the ``r`` output rows of the block row, so the weight loads ``data[b, j, 0:r]`` and the stores
``y[m, n0:n0 + r]`` are coalesced; ``threadIdx.y`` over ``ty`` x rows, each thread accumulating
``m_per_thread`` rows in registers (every weight value it loads feeds that many FMAs).
"""

from __future__ import annotations

import dataclasses

from hwcomp.schedules.bsr_spec import BsrSpec

ACTIVATIONS = ("none", "relu", "gelu")


@dataclasses.dataclass(frozen=True)
class CudaBSRKnobs:
    """Tunable parameters: ``ty`` thread rows per CUDA block, ``m_per_thread`` x rows per thread."""

    ty: int = 8
    m_per_thread: int = 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def knob_candidates(m: int) -> list[CudaBSRKnobs]:
    """A small search space for a measuring tuner."""
    return [CudaBSRKnobs(ty, mpt) for ty in (4, 8, 16) for mpt in (1, 2, 4, 8) if ty * mpt <= max(m, 4) * 2]


def cuda_bsr_source(spec: BsrSpec, knobs: CudaBSRKnobs, name: str = "bsr_matmul") -> str:
    """TVMScript source of the CUDA kernel ``name(x, data, indices, indptr, [bias], y)`` (fp32 only)."""
    m, k, n, block, bias, activation, dtype = spec.m, spec.k, spec.n, spec.block, spec.bias, spec.activation, spec.dtype
    if spec.x_dtype is not None:
        raise ValueError(f"the CUDA BSR kernel has no quantized variant (x_dtype={spec.x_dtype!r})")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    r, c = block
    nbr = -(-n // r)
    mpt = max(1, knobs.m_per_thread)
    ty = max(1, knobs.ty)
    m_tile = ty * mpt
    m_blocks = -(-m // m_tile)
    zero = f"T.{dtype}(0.0)"
    col = f"indices[b] * {c} + j" if c > 1 else "indices[b]"
    jj = "j" if c > 1 else "0"
    # Rows past M (last M tile) read row M-1 and are not stored; columns past K read as 0.
    xv = f"x[T.min(mrow, {m - 1}), {col}]"
    if k % c:
        xv = f"T.if_then_else({col} < {k}, {xv}, {zero})"
    val = "acc[u]" + (" + bias[ncol]" if bias else "")
    if activation == "relu":
        val = f"T.max({val}, {zero})"
    elif activation == "gelu":
        val = f"T.{dtype}(0.5) * ({val}) * (T.{dtype}(1.0) + T.erf(({val}) * T.{dtype}(0.7071067811865476)))"
    guard = f"mrow < {m}" + (f" and ncol < {n}" if n % r else "")
    bias_arg = f'bias: T.Buffer(({n},), "{dtype}"), ' if bias else ""
    lines = [
        "@T.prim_func",
        (f'def {name}(x: T.Buffer(({m}, {k}), "{dtype}"), data_h: T.handle, indices_h: T.handle, '
         f'indptr: T.Buffer(({nbr + 1},), "int32"), {bias_arg}y: T.Buffer(({m}, {n}), "{dtype}")):'),
        '    T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})',
        "    nnzb = T.int32()",
        f'    data = T.match_buffer(data_h, (nnzb, {c}, {r}), "{dtype}")',
        '    indices = T.match_buffer(indices_h, (nnzb,), "int32")',
        f'    for br in T.thread_binding({nbr}, thread="blockIdx.x"):',
        f'        for mb in T.thread_binding({m_blocks}, thread="blockIdx.y"):',
        f'            for tyi in T.thread_binding({ty}, thread="threadIdx.y"):',
        f'                for tx in T.thread_binding({r}, thread="threadIdx.x"):',
        f'                    acc = T.alloc_buffer(({mpt},), "{dtype}", scope="local")',
        f"                    for u in T.unroll({mpt}):",
        f"                        acc[u] = {zero}",
        "                    for b in range(indptr[br], indptr[br + 1]):",
    ]
    p = " " * 24
    if c > 1:
        lines.append(f"{p}for j in T.unroll({c}):")
        p += "    "
    lines += [
        f"{p}w = data[b, {jj}, tx]",
        f"{p}for u in T.unroll({mpt}):",
        f"{p}    mrow = mb * {m_tile} + u * {ty} + tyi",
        f"{p}    acc[u] = acc[u] + {xv} * w",
        f"                    for u in T.unroll({mpt}):",
        f"                        mrow = mb * {m_tile} + u * {ty} + tyi",
        f"                        ncol = br * {r} + tx",
        f"                        if {guard}:",
        f"                            y[mrow, ncol] = {val}",
    ]
    return "\n".join(lines) + "\n"


def bsr_kernel(target, spec: BsrSpec, knobs: CudaBSRKnobs | None = None):
    """The scheduled CUDA ``PrimFunc`` for one :class:`BsrSpec` (``target`` is an hwcomp Target, unused
    but for API parity)."""
    import tvm

    # Measured on an H100 (128x768 -> 3072, 90% 16x1): ty=8, 2 rows per thread 19 us, 4 rows 27 us.
    knobs = knobs or CudaBSRKnobs(ty=8 if spec.m >= 16 else 4, m_per_thread=2 if spec.m >= 16 else 1)
    return tvm.script.from_source(cuda_bsr_source(spec, knobs))
