"""BSR × dense kernels for LLVM CPU targets: the generic CPU generator (``schedules/x86/bsr.py`` and
``schedules/arm/bsr.py`` are its specializations, parametrized by vector width).

``y[M, N] = x[M, K] @ W.T (+ bias) (then ReLU or GELU)`` with ``W`` packed by :func:`hwcomp.sparse_format.bsr.pack_bsr`
into ``data[nnzb, c, r]``, ``indices[nnzb]``, ``indptr[N_pad / r + 1]``. One PrimFunc is generated per
shape and knob set as TVMScript text (TVMScript cannot close over Python values); ``nnzb`` is symbolic
so layers with the same shape share a kernel.

Loop structure (already scheduled, so it carries ``tirx.is_scheduled``):

* parallel over tasks of ``rows_per_task`` block rows;
* per block row, an ``mt × r`` accumulator tile lives in registers: the ``r`` output rows of a block
  are one vector (``r`` = fp32 lanes for the target's preferred block, two vectors for 16x1 on AVX2),
  each of the ``mt`` x rows is one broadcast, so every weight vector loaded feeds ``mt`` FMAs;
* the epilogue (bias, ReLU or GELU) is applied to the tile before its single store.

Blocks narrower than a vector (1x1, 4x1 on AVX2) use the transposed variant (``vector_axis="m"``):
vectors run along ``mt`` rows of a transposed copy of x, each weight is broadcast, tiles are stored
into a transposed scratch ``yT[N, M]`` and one last parallel pass transposes it into ``y`` with the
epilogue.

Knobs for a tuner are in :class:`BSRKnobs`; :func:`knob_candidates` lists a small search space.
"""

from __future__ import annotations

import dataclasses

from hwcomp.schedules.bsr_spec import BsrSpec

# erf(x) ≈ x·P(x²)/Q(x²) on x clamped to [-4, 4]: vectorizes, where a call to libm's erff would not.
from hwcomp.erf_approx import ERF_CLAMP as _ERF_CLAMP
from hwcomp.erf_approx import ERF_P as _ERF_P
from hwcomp.erf_approx import ERF_Q as _ERF_Q

ACTIVATIONS = ("none", "relu", "gelu")


def _horner(coeffs: tuple[float, ...], w: str, dtype: str) -> str:
    expr = f"T.{dtype}({coeffs[-1]!r})"
    for c in reversed(coeffs[:-1]):
        expr = f"({w} * {expr} + T.{dtype}({c!r}))"
    return expr


def epilogue_expr(v: str, activation: str, dtype: str = "float32") -> str:
    """TVMScript expression applying ``activation`` to the expression ``v`` (repeats are left to LLVM's CSE)."""
    if activation == "none":
        return v
    if activation == "relu":
        return f"T.max({v}, T.{dtype}(0.0))"
    if activation == "gelu":  # 0.5·v·(1 + erf(v/√2))
        xc = (f"T.max(T.min(({v}) * T.{dtype}(0.7071067811865476), T.{dtype}({_ERF_CLAMP!r})), "
              f"T.{dtype}({-_ERF_CLAMP!r}))")
        w = f"({xc} * {xc})"
        erf = f"({xc} * {_horner(_ERF_P, w, dtype)} / {_horner(_ERF_Q, w, dtype)})"
        return f"T.{dtype}(0.5) * ({v}) * (T.{dtype}(1.0) + {erf})"
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


@dataclasses.dataclass(frozen=True)
class BSRKnobs:
    """Tunable parameters of the CPU BSR kernel.

    ``vector_axis``: ``"n"`` vectorizes over the block's ``r`` output rows (needs ``r`` ≥ the fp32
    lanes to fill a vector) and broadcasts x; ``"m"`` vectorizes over ``mt`` rows of x (read from a
    transposed copy) and broadcasts each weight — the choice for narrow blocks (1x1, 4x1 on AVX2).
    ``mt``: x rows per register tile (accumulator = ``mt × r``). ``rows_per_task``: block rows per
    parallel task (0 = split them evenly over the cores). ``m_outer``: inside a task, loop over M tiles
    outside the block rows (an x tile stays in L1 while the task's weights stream through) instead of
    the reverse (a block row's weights stay in L1 while x streams). ``x_transposed``: (``"n"`` only)
    read x from a transposed ``[K, M]`` copy made in a prologue, so the ``mt`` broadcasts of one
    column share a cache line.
    """

    mt: int = 4
    rows_per_task: int = 0
    m_outer: bool = True
    x_transposed: bool = False
    vector_axis: str = "n"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _n_vector_regs(vector_bits: int) -> int:
    return 32 if vector_bits == 128 else 16  # AArch64 NEON has 32 vector registers, AVX2 16


def default_knobs(vector_bits: int, block: tuple[int, int], m: int) -> BSRKnobs:
    """Untuned choice from measurements on AVX2 (Zen 1, 128x768 -> 3072, 90%): 16x1 best at 6 rows
    (12 accumulators), 8x1 at 8 rows (more spill, as every x broadcast needs its own register)."""
    lanes = max(vector_bits // 32, 1)
    r = block[0]
    regs = _n_vector_regs(vector_bits)
    if r >= lanes:
        per_row = r // lanes  # vectors per x row of the tile
        budget = regs * 3 // 4 if per_row > 1 else regs // 2
        return BSRKnobs(mt=max(1, min(m, budget // per_row)))
    # Narrow blocks: vectors along M; r accumulator rows of mt/lanes vectors each.
    vecs = max(1, min(4, (regs // 2) // r))
    return BSRKnobs(mt=max(1, min(m, vecs * lanes)), m_outer=False, vector_axis="m")


def knob_candidates(vector_bits: int, block: tuple[int, int], m: int) -> list[BSRKnobs]:
    """A small search space around :func:`default_knobs` for a measuring tuner, likeliest first
    (the first four are what :class:`~hwcomp.passes.dense_to_bsr.DenseToBSR` tries when measuring)."""
    base = default_knobs(vector_bits, block, m)
    lanes = max(vector_bits // 32, 1)
    if base.vector_axis == "m":
        mts = [base.mt, base.mt // 2, base.mt * 2, base.mt * 3 // 2]
        variants = [{"vector_axis": "m", "mt": mt, "m_outer": mo} for mo in (False, True) for mt in mts]
    else:
        mts = [base.mt, base.mt * 2 // 3, base.mt // 2, base.mt + 2]
        variants = [{"mt": mt, "m_outer": mo, "rows_per_task": 0 if mo else 1}
                    for mt in mts[:2] for mo in (True, False)]
        variants += [{"mt": mt, "m_outer": mo, "rows_per_task": 0 if mo else 1, "x_transposed": xt}
                     for mt in mts for mo in (True, False) for xt in (False, True)]
    out = [base]
    for v in variants:
        v["mt"] = max(1, min(m, v["mt"]))
        if v.get("vector_axis") == "m" and v["mt"] > lanes:
            v["mt"] -= v["mt"] % lanes
        k = BSRKnobs(**v)
        if k not in out:
            out.append(k)
    return out


def _largest_divisor_at_most(n: int, limit: int) -> int:
    for d in range(max(1, min(n, limit)), 0, -1):
        if n % d == 0:
            return d
    return 1


def _f(dtype: str, v: float) -> str:
    return f"T.{dtype}({v})"


def cpu_bsr_source(spec: BsrSpec, knobs: BSRKnobs, num_cores: int, vector_bits: int,
                   name: str = "bsr_matmul") -> str:
    """TVMScript source of the CPU kernel ``name(x, data, indices, indptr, [bias], y)`` for ``spec``.

    With ``spec.x_dtype`` (``int8``/``uint8``) it is the quantized kernel
    ``name(xq, data_i8, indices, indptr, bias_i32, deq, y)``: ``int8 × int8 → int32`` accumulation in
    the same register tiles, and ``y = act((acc + bias) · deq[n])`` in float32 (``deq`` = the
    activation scale × the weight scale of each output; ``bias`` holds the folded zero point).
    """
    m, k, n, block = spec.m, spec.k, spec.n, spec.block
    bias, activation, dtype, x_dtype = spec.bias, spec.activation, spec.dtype, spec.x_dtype
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    r, c = block
    nbr = -(-n // r)
    nbr_full = n // r  # block rows whose r outputs all exist
    n_tail = n - nbr_full * r
    k_ragged = k % c != 0
    by_m = knobs.vector_axis == "m"
    if knobs.vector_axis not in ("n", "m"):
        raise ValueError(f"vector_axis must be 'n' or 'm', got {knobs.vector_axis!r}")
    mt = max(1, min(knobs.mt, m))
    m_tiles, m_tail = divmod(m, mt)
    rpt = knobs.rows_per_task or -(-nbr_full // max(num_cores, 1))
    rpt = _largest_divisor_at_most(nbr_full, rpt) if nbr_full else 1
    n_tasks = nbr_full // rpt if nbr_full else 0
    quant = x_dtype is not None
    # Bytes are widened to int32 and multiplied there. (int16 products, exact for u8 · s8, measured
    # no faster on AVX2: 2.76 vs 2.79 ms at 128x384->1536, 50%; 0.60 vs 0.52 ms at 1536->384, 90%.)
    acc_dtype, w_dtype, in_dtype = ("int32", "int8", x_dtype) if quant else (dtype, dtype, dtype)
    out_dtype = "float32" if quant else dtype
    zero = "T.int32(0)" if quant else _f(dtype, 0.0)
    lanes = max(vector_bits // 32, 1)
    acc_shape = f"({r}, {mt})" if by_m else f"({mt}, {r})"

    def x_at(row: str, col: str) -> str:
        v = f"xT[{col}, {row}]" if knobs.x_transposed or by_m else f"x[{row}, {col}]"
        # Blocks of the last block column may reach past K: those x entries are padding, read as 0.
        if quant:
            v = f'T.Cast("int32", {v})'
        return f"T.if_then_else({col} < {k}, {v}, {zero})" if k_ragged else v

    def vec_loop(var: str, extent: int) -> tuple[list[str], str]:
        """Loop headers over ``extent`` lanes, split into lane-wide vectors, and the index expression.

        LLVM legalizes odd-sized vectors (24, 48 lanes) poorly, so whole vectors are unrolled."""
        if extent > lanes and extent % lanes == 0:
            return ([f"for {var}v in T.unroll({extent // lanes}):", f"for {var}l in T.vectorized({lanes}):"],
                    f"({var}v * {lanes} + {var}l)")
        return [f"for {var} in T.vectorized({extent}):"], var

    def nest(ind: int, stmt_of, rows: int, store_n: int | None = None) -> list[str]:
        """Loops over the accumulator tile; ``stmt_of(mi, i)`` is the body statement."""
        if by_m:  # acc[i, mi]: vectors along M
            heads, mi = vec_loop("mi", rows)
            heads, i = [f"for i in T.unroll({r}):", *heads], "i"
        else:  # acc[mi, i]: vectors along the block's r outputs
            if store_n is None or store_n == r:
                vh, i = vec_loop("i", r)
            else:  # the cut last block row: scalar stores of the outputs that exist
                vh, i = [f"for i in range({store_n}):"], "i"
            heads, mi = [f"for mi in T.unroll({rows}):", *vh], "mi"
        lines = [" " * (ind + 4 * d) + h for d, h in enumerate(heads)]
        return lines + [" " * (ind + 4 * len(heads)) + stmt_of(mi, i)]

    def acc_at(mi: str, i: str) -> str:
        return f"acc[{i}, {mi}]" if by_m else f"acc[{mi}, {i}]"

    def tile(ind: int, br: str, m0: str, rows: int, stored: int) -> list[str]:
        """One block row × ``rows`` x rows: zero, accumulate, epilogue + store (``stored`` outputs)."""
        col = f"indices[b] * {c} + j" if c > 1 else "indices[b]"
        jj = "j" if c > 1 else "0"
        lines = nest(ind, lambda mi, i: f"{acc_at(mi, i)} = {zero}", rows)
        lines.append(" " * ind + f"for b in range(indptr[{br}], indptr[{br} + 1]):")
        ind2 = ind + 4
        if c > 1:
            lines.append(" " * ind2 + f"for j in T.unroll({c}):")
            ind2 += 4
        def update(mi: str, i: str) -> str:
            w = f'T.Cast("int32", data[b, {jj}, {i}])' if quant else f"data[b, {jj}, {i}]"
            return f"{acc_at(mi, i)} = {acc_at(mi, i)} + {x_at(f'{m0} + {mi}', col)} * {w}"

        lines += nest(ind2, update, rows)

        if by_m:
            # Vectors along M would be scattered over rows of y: store them contiguously into the
            # transposed scratch yT (padded to whole block rows); the epilogue transposes it back.
            return lines + nest(ind, lambda mi, i: f"yT[{br} * {r} + {i}, {m0} + {mi}] = {acc_at(mi, i)}", rows)

        def store(mi: str, i: str) -> str:
            val = finish(acc_at(mi, i), f"{br} * {r} + {i}")
            return f"y[{m0} + {mi}, {br} * {r} + {i}] = {val}"

        return lines + nest(ind, store, rows, store_n=stored)

    def finish(v: str, col: str) -> str:
        """The epilogue of one accumulator value ``v`` of output column ``col``."""
        if quant:
            return epilogue_expr(f'T.Cast("float32", {v} + bias[{col}]) * deq[{col}]', activation, "float32")
        return epilogue_expr(v + (f" + bias[{col}]" if bias else ""), activation, dtype)

    def row_tiles(ind: str, br: str, stored: int) -> list[str]:
        p = " " * ind
        lines = []
        if m_tiles:
            lines.append(f"{p}for m0 in range({m_tiles}):")
            lines += tile(ind + 4, br, f"m0 * {mt}", mt, stored)
        if m_tail:
            lines += tile(ind, br, str(m_tiles * mt), m_tail, stored)
        return lines

    if quant:
        bias_arg = f'bias: T.Buffer(({n},), "int32"), deq: T.Buffer(({n},), "float32"), '
    else:
        bias_arg = f'bias: T.Buffer(({n},), "{dtype}"), ' if bias else ""
    body = [
        "@T.prim_func",
        (f'def {name}(x: T.Buffer(({m}, {k}), "{in_dtype}"), data_h: T.handle, indices_h: T.handle, '
         f'indptr: T.Buffer(({nbr + 1},), "int32"), {bias_arg}y: T.Buffer(({m}, {n}), "{out_dtype}")):'),
        '    T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})',
        "    nnzb = T.int32()",
        f'    data = T.match_buffer(data_h, (nnzb, {c}, {r}), "{w_dtype}")',
        '    indices = T.match_buffer(indices_h, (nnzb,), "int32")',
    ]
    if by_m:
        body.append(f'    yT = T.alloc_buffer(({nbr * r}, {m}), "{acc_dtype}")')
    if knobs.x_transposed or by_m:
        body += [
            f'    xT = T.alloc_buffer(({k}, {m}), "{in_dtype}")',
            f"    for kk in T.parallel({k}):",
            f"        for mm in range({m}):",
            "            xT[kk, mm] = x[mm, kk]",
        ]
    if n_tasks:
        body += [
            f"    for task in T.parallel({n_tasks}):",
            f'        acc = T.alloc_buffer({acc_shape}, "{acc_dtype}", scope="local")',
        ]
        if knobs.m_outer and rpt > 1:
            # x tile outer: each M tile runs over all block rows of the task.
            if m_tiles:
                body.append(f"        for m0 in range({m_tiles}):")
                body.append(f"            for bi in range({rpt}):")
                body += tile(16, f"(task * {rpt} + bi)", f"m0 * {mt}", mt, r)
            if m_tail:
                body.append(f"        for bi in range({rpt}):")
                body += tile(12, f"(task * {rpt} + bi)", str(m_tiles * mt), m_tail, r)
        else:
            body.append(f"        for bi in range({rpt}):")
            body += row_tiles(12, f"(task * {rpt} + bi)", r)
    if n_tail:
        # The last block row is cut by N: accumulate full vectors, store only the existing outputs.
        body += [
            "    for _t in range(1):",
            f'        acc = T.alloc_buffer({acc_shape}, "{acc_dtype}", scope="local")',
        ]
        body += row_tiles(8, str(nbr_full), n_tail)
    if by_m:
        # yT[N, M] -> y[M, N] with the epilogue: lane-wide column strips keep the yT reads on a few
        # cache lines while the stores to y are contiguous vectors.
        def out(nn: str) -> str:
            return finish(f"yT[{nn}, mm]", nn)

        strips, rest = divmod(n, lanes)
        if strips:
            body += [f"    for n0 in T.parallel({strips}):", f"        for mm in range({m}):",
                     f"            for nl in T.vectorized({lanes}):",
                     f"                y[mm, n0 * {lanes} + nl] = {out(f'n0 * {lanes} + nl')}"]
        if rest:
            body += [f"    for mm in range({m}):", f"        for nl in range({rest}):",
                     f"            y[mm, {strips * lanes} + nl] = {out(f'{strips * lanes} + nl')}"]
    return "\n".join(body) + "\n"


def cpu_bsr_kernel(spec: BsrSpec, knobs: BSRKnobs | None = None, num_cores: int = 1, vector_bits: int = 256):
    """The scheduled ``tvm.tirx.PrimFunc`` for one :class:`BsrSpec` (see :func:`cpu_bsr_source`)."""
    import tvm

    knobs = knobs or default_knobs(vector_bits, spec.block, spec.m)
    return tvm.script.from_source(cpu_bsr_source(spec, knobs, num_cores, vector_bits))


def bsr_kernel(target, spec: BsrSpec, knobs: BSRKnobs | None = None):
    """CPU kernel for an hwcomp :class:`~hwcomp.target.Target` (vector width from its description);
    ``spec.x_dtype`` makes it the int8 kernel (see :func:`cpu_bsr_source`)."""
    return cpu_bsr_kernel(spec, knobs or default_knobs(target.vector_bits, spec.block, spec.m),
                          target.num_cores, target.vector_bits)


def target_knob_candidates(target, block: tuple[int, int], m: int) -> list[BSRKnobs]:
    """:func:`knob_candidates` for a :class:`~hwcomp.target.Target` (the backends' knob space)."""
    return knob_candidates(target.vector_bits, block, m)


def knobs_from_dict(d: dict | None) -> BSRKnobs | None:
    """Stored knobs (``BSRKnobs.to_dict``) back as :class:`BSRKnobs`; None stays None."""
    return BSRKnobs(**d) if d else None
