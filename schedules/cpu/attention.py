"""Fused attention for LLVM CPU targets: ``softmax(epilogue(Q @ Kᵀ)) @ V`` in one kernel.

Unfused, attention writes its ``G × L × Lk`` scores to memory, reads them back for the softmax
and again for the weighted sum: three passes over 54 MB per Whisper-tiny layer (1500 frames, six
heads), each slower than the arithmetic around it. Here each task owns ``rows`` query rows of one
head (``G`` = batch × heads) and keeps their ``rows × Lk`` scores in a per-task scratch that stays
in L1/L2:

1. ``Kᵀ`` is packed once into ``nr``-wide column panels (zero past ``Lk``), so the scores tile is a
   small matmul with a ``rows × nr`` accumulator tile in registers (``nr`` = two vectors), as in
   ``TiledReduction``; the epilogue (a constant scale, additive biases such as attention masks or
   relative positions, broadcast as the graph had them) is applied at the tile's store;
2. per row: max and ``exp``-sum as vector-wide partial reductions over the whole vectors of the row
   and a scalar tail (no padding is read), ``exp`` as the same polynomial ``topi.fast_exp`` uses
   when ``fast_exp``; one reciprocal per row;
3. the weighted sum over ``Lk`` with a ``rows × 2`` vectors accumulator tile, scaled by the
   reciprocal at its store.

``safe``: rows whose scores are all ``-inf`` give 0 (PyTorch's ``_safe_softmax``, what
``scaled_dot_product_attention`` exports to); otherwise such rows give NaN as ``torch.softmax`` does.
Generated per shape as TVMScript text (TVMScript cannot close over Python values), already
scheduled (``tirx.is_scheduled``).
"""

from __future__ import annotations

import dataclasses
import math

# topi.fast_exp's float32 polynomial (include/tvm/topi/elemwise.h), written out so it vectorizes
# inside a hand-written loop nest
_EXP_HI = 88.3762626647950
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


@dataclasses.dataclass(frozen=True)
class Bias:
    """An additive bias on the scores: ``shape`` (static), broadcast against ``frame``, the shape the
    scores had where the graph added it (its leading dims multiply to ``G``, its last two are
    ``(L, Lk)``)."""

    shape: tuple[int, ...]
    frame: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """One attention shape. ``epilogue``: what the graph applied to ``Q @ Kᵀ`` before the softmax, in
    order: ``("mul", c)`` or ``("add", i)`` (``biases[i]``). ``heads`` > 0 with ``natural`` (one flag
    per operand: q, k, v): that operand is read where the projection wrote it, ``[B, rows, heads x
    depth]`` (``G = B x heads``; k as ``[B, cols, heads x depth]``, not transposed), instead of a
    copy in head-major order made by a kernel of its own."""

    groups: int
    rows: int
    cols: int
    depth: int
    out_depth: int
    epilogue: tuple[tuple[str, float | int], ...] = ()
    biases: tuple[Bias, ...] = ()
    safe: bool = False
    fast_exp: bool = True
    heads: int = 0
    natural: tuple[bool, bool, bool] = (False, False, False)

    def __post_init__(self):
        if any(self.natural) and (self.heads < 1 or self.groups % self.heads):
            raise ValueError(f"attention: {self.groups} groups are not a batch of {self.heads} heads")
        for b in self.biases:
            if math.prod(b.frame[:-2]) != self.groups or tuple(b.frame[-2:]) != (self.rows, self.cols) \
                    or len(b.shape) > len(b.frame) \
                    or any(s not in (1, f) for s, f in zip(reversed(b.shape), reversed(b.frame))):
                raise ValueError(f"attention bias {b.shape} does not broadcast to scores {b.frame}")


def _bias_index(b: Bias, g: str, i: str, j: str) -> str:
    """Index text of ``b`` at score ``(g, i, j)`` (``g`` unravelled over the frame's leading dims)."""
    lead = b.frame[:-2]
    idx = []
    stride = math.prod(lead)
    for f in lead:
        stride //= f
        idx.append(f"{g} // {stride} % {f}" if stride > 1 else f"{g} % {f}")
    idx += [i, j]
    idx = idx[len(b.frame) - len(b.shape):]
    return ", ".join("0" if s == 1 else x for s, x in zip(b.shape, idx))


def _exp_lines(pad: str, i: str, x: str, dst: str, fast: bool) -> list[str]:
    """Statements storing ``exp(x)`` to ``dst``, through the local buffers ``ex``, ``en``, ``ef`` at
    lane ``i`` (TVMScript's ``name = expr`` binds a scalar, which the vectorizer would broadcast)."""
    if not fast:
        return [f"{pad}{dst} = T.exp({x})"]
    f = f"ef[{i}]"
    poly = f"T.float32({_EXP_P[0]!r})"
    for c in _EXP_P[1:]:
        poly = f"({poly} * {f} + T.float32({c!r}))"
    return [
        f"{pad}ex[{i}] = T.max(T.min({x}, T.float32({_EXP_HI!r})), T.float32({-_EXP_HI!r}))",
        f"{pad}en[{i}] = T.floor(ex[{i}] * T.float32(1.4426950408889634) + T.float32(0.5))",
        f"{pad}{f} = ex[{i}] - en[{i}] * T.float32(0.6931471805599453)",
        (f'{pad}{dst} = T.max(T.reinterpret("float32", T.shift_left(T.Cast("int32", en[{i}] + T.float32(127.0)), 23))'
         f" * ({poly} * {f} * {f} + {f} + T.float32(1.0)), ex[{i}])"),
    ]


def panel_width(vector_bits: int) -> int:
    """Columns of the scores' register tile: two vectors."""
    return 2 * max(1, vector_bits // 32)


def tile_rows(vector_bits: int, registers: int, rows: int) -> int:
    """Query rows per task: the register tile (rows × two vectors) takes three quarters of the
    vector registers: 12 rows with 32 (measured on an AVX-512 Xeon at 128/197/1500 tokens: 8 rows
    1.06-1.38x slower, 16 spill), 6 with 16 (AVX2 code on the same machine: 4 rows 1.08-1.23x
    slower, 8 spill). With 32 registers, where that tile leaves more than a tenth of the last task's
    rows empty (Swin's 49-token windows: 60 rows for 49; MobileViT's 16 and 64 tokens), the tile of
    8 to 12 rows that wastes fewest (49: 10; 16 and 64: 8): Swin-T's attention kernels 9-13 % faster,
    MobileViT-S's at 16 tokens 22 %, at 64 3 % (AVX-512 Xeon, in the model). 16 registers keep 6
    rows: unmeasured there."""
    most = max(1, min(registers * 3 // 4 // 2, rows))
    if registers < 32 or -(-rows // most) * most <= 1.1 * rows:
        return most
    return min(range(most, max(1, most * 2 // 3) - 1, -1), key=lambda r: -(-rows // r) * r)


def attention_source(spec: AttentionSpec, vector_bits: int = 256, registers: int = 16,
                     name: str = "attention") -> str:
    """TVMScript of the fused kernel: ``q[G, L, D]``, ``kt[G, D, Lk]``, ``v[G, Lk, Dv]`` (or, per
    ``spec.natural``, ``[B, L or Lk, H x D]``), the biases, ``out[G, L, Dv]``."""
    G, L, Lk, D, Dv = spec.groups, spec.rows, spec.cols, spec.depth, spec.out_depth
    lanes = max(1, vector_bits // 32)
    nr = panel_width(vector_bits)
    r = tile_rows(vector_bits, registers, L)
    nib = -(-L // r)
    npanel, ptail = divmod(Lk, nr)
    npan = npanel + (1 if ptail else 0)
    nvec, vtail = divmod(Lk, lanes)
    lowest = "T.float32(-3.4028234663852886e38)"

    def epi(v: str, i: str, j: str) -> str:
        for kind, arg in spec.epilogue:
            if kind == "mul":
                v = f"({v}) * T.float32({float(arg)!r})"
            elif kind == "add":
                v = f"({v}) + bias{arg}[{_bias_index(spec.biases[int(arg)], 'g', i, j)}]"
            else:
                raise ValueError(f"attention epilogue: unknown step {kind!r}")
        return v

    H = spec.heads
    nq, nk, nv = spec.natural
    B = G // H if H else G
    args = [f'q: T.Buffer(({B}, {L}, {H * D}), "float32")' if nq else f'q: T.Buffer(({G}, {L}, {D}), "float32")',
            f'kt: T.Buffer(({B}, {Lk}, {H * D}), "float32")' if nk else f'kt: T.Buffer(({G}, {D}, {Lk}), "float32")',
            f'v: T.Buffer(({B}, {Lk}, {H * Dv}), "float32")' if nv else f'v: T.Buffer(({G}, {Lk}, {Dv}), "float32")']

    def q_at(g: str, i: str, k: str) -> str:
        return f"q[{g} // {H}, {i}, {g} % {H} * {D} + {k}]" if nq else f"q[{g}, {i}, {k}]"

    def kt_at(g: str, k: str, j: str) -> str:
        return f"kt[{g} // {H}, {j}, {g} % {H} * {D} + {k}]" if nk else f"kt[{g}, {k}, {j}]"

    def v_at(g: str, j: str, c: str) -> str:
        return f"v[{g} // {H}, {j}, {g} % {H} * {Dv} + {c}]" if nv else f"v[{g}, {j}, {c}]"

    args += [f'bias{n}: T.Buffer({tuple(b.shape)!r}, "float32")' for n, b in enumerate(spec.biases)]
    args.append(f'out: T.Buffer(({G}, {L}, {Dv}), "float32")')
    b = [
        "@T.prim_func",
        f"def {name}({', '.join(args)}):",
        '    T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})',
        f'    ktp = T.alloc_buffer(({G}, {npan}, {D}, {nr}), "float32")',
        # pack Kᵀ into column panels, zero past Lk (the scores tile then never reads out of bounds)
        f"    for gp in T.parallel({G * npan}):",
        f"        for k in range({D}):",
    ]
    if npanel:
        b += [f"            if gp % {npan} < {npanel}:",
              f"                for jv in T.vectorized({nr}):",
              f"                    ktp[gp // {npan}, gp % {npan}, k, jv] = {kt_at(f'gp // {npan}', 'k', f'gp % {npan} * {nr} + jv')}"]
    if ptail:
        b += [f"            if gp % {npan} == {npanel}:",
              f"                for jv in range({nr}):",
              (f"                    ktp[gp // {npan}, {npanel}, k, jv] = T.if_then_else(jv < {ptail}, "
               f"{kt_at(f'gp // {npan}', 'k', f'T.min({npanel * nr} + jv, {Lk - 1})')}, T.float32(0.0))")]
    row = f"T.min(i0 + ii, {L - 1})"  # the task's query row; rows past L repeat the last one
    b += [
        f"    for t in T.parallel({G * nib}):",
        f'        s = T.alloc_buffer(({r}, {npan * nr}), "float32")',
        f'        acc = T.alloc_buffer(({r}, {nr}), "float32", scope="local")',
        f'        part = T.alloc_buffer(({lanes},), "float32", scope="local")',
        '        mx = T.alloc_buffer((1,), "float32", scope="local")',
        f'        ex = T.alloc_buffer(({lanes},), "float32", scope="local")',
        f'        en = T.alloc_buffer(({lanes},), "float32", scope="local")',
        f'        ef = T.alloc_buffer(({lanes},), "float32", scope="local")',
        '        red = T.alloc_buffer((1,), "float32", scope="local")',
        f'        rinv = T.alloc_buffer(({r},), "float32", scope="local")',
        f"        g = t // {nib}",
        f"        i0 = t % {nib} * {r}",
        # 1. scores: a rows x nr register tile per panel; rows past L repeat the last row
        f"        for jo in range({npan}):",
        f"            for ii in T.unroll({r}):",
        f"                for jv in T.vectorized({nr}):",
        "                    acc[ii, jv] = T.float32(0.0)",
        f"            for k in range({D}):",
        f"                for ii in T.unroll({r}):",
        f"                    for jv in T.vectorized({nr}):",
        f"                        acc[ii, jv] = acc[ii, jv] + {q_at('g', row, 'k')} * ktp[g, jo, k, jv]",
    ]
    if npanel:
        b += [f"            if jo < {npanel}:",
              f"                for ii in T.unroll({r}):",
              f"                    for jv in T.vectorized({nr}):",
              f"                        s[ii, jo * {nr} + jv] = {epi('acc[ii, jv]', row, f'jo * {nr} + jv')}"]
    if ptail:
        b += [f"            if jo == {npanel}:",
              f"                for ii in T.unroll({r}):",
              f"                    for jv in range({ptail}):",
              f"                        s[ii, {npanel * nr} + jv] = {epi('acc[ii, jv]', row, f'{npanel * nr} + jv')}"]
    # 2. per row: max, exp and sum, one reciprocal
    b += [f"        for ii in range({r}):",
          f"            for l in T.vectorized({lanes}):",
          f"                part[l] = {lowest}"]
    if nvec:
        b += [f"            for jo in range({nvec}):",
              f"                for l in T.vectorized({lanes}):",
              f"                    part[l] = T.max(part[l], s[ii, jo * {lanes} + l])"]
    b += [f"            mx[0] = {lowest}",
          f"            for l in range({lanes}):",
          "                mx[0] = T.max(mx[0], part[l])"]
    if vtail:
        b += [f"            for j in range({vtail}):",
              f"                mx[0] = T.max(mx[0], s[ii, {nvec * lanes} + j])"]
    b += [f"            for l in T.vectorized({lanes}):",
          "                part[l] = T.float32(0.0)"]
    if nvec:
        b += [f"            for jo in range({nvec}):",
              f"                for l in T.vectorized({lanes}):",
              *_exp_lines(" " * 20, "l", f"s[ii, jo * {lanes} + l] - mx[0]", f"s[ii, jo * {lanes} + l]",
                          spec.fast_exp),
              f"                    part[l] = part[l] + s[ii, jo * {lanes} + l]"]
    b += ["            red[0] = T.float32(0.0)",
          f"            for l in range({lanes}):",
          "                red[0] = red[0] + part[l]"]
    if vtail:
        b += [f"            for j in range({vtail}):",
              *_exp_lines(" " * 16, "0", f"s[ii, {nvec * lanes} + j] - mx[0]", f"s[ii, {nvec * lanes} + j]",
                          spec.fast_exp),
              f"                red[0] = red[0] + s[ii, {nvec * lanes} + j]"]
    # the max starts at the lowest finite value: a fully -inf row's max is that value
    recip = "T.float32(1.0) / red[0]"
    b.append(f"            rinv[ii] = T.Select(mx[0] <= {lowest}, T.float32(0.0), {recip})" if spec.safe
             else f"            rinv[ii] = {recip}")
    # 3. weighted sum: rows x (up to) nr outputs per chunk of Dv
    chunks = [(c0, min(nr, Dv - c0)) for c0 in range(0, Dv, nr)]
    for c0, w in chunks:
        b += [f"        for ii in T.unroll({r}):",
              f"            for dv in T.vectorized({w}):",
              "                acc[ii, dv] = T.float32(0.0)",
              f"        for j in range({Lk}):",
              f"            for ii in T.unroll({r}):",
              f"                for dv in T.vectorized({w}):",
              f"                    acc[ii, dv] = acc[ii, dv] + s[ii, j] * {v_at('g', 'j', f'{c0} + dv')}",
              f"        for ii in range({r}):",
              f"            if i0 + ii < {L}:",
              f"                for dv in T.vectorized({w}):",
              f"                    out[g, i0 + ii, {c0} + dv] = acc[ii, dv] * rinv[ii]"]
    return "\n".join(b) + "\n"


def attention_kernel(spec: AttentionSpec, vector_bits: int = 256, registers: int = 16):
    """The scheduled ``tvm.tirx.PrimFunc`` for ``spec`` (see :func:`attention_source`)."""
    import tvm

    return tvm.script.from_source(attention_source(spec, vector_bits, registers))
