"""FuseAttention: ``softmax(epilogue(Q @ Kᵀ)) @ V`` onto hwcomp's fused CPU attention kernel.

Matched from the weighted sum backwards, as ``torch.export`` gives attention (eager or
``scaled_dot_product_attention``):

    s = matmul(q, kt)                       # q [..., L, D], kt [..., D, Lk], same batch dims
    s = reshape / multiply or divide by a scalar constant / add a float32 bias   (any order, any number)
    p = softmax(s, axis=-1)  or  PyTorch's _safe_softmax pattern (see RowSoftmax)
    p = reshape / broadcast_to (to its own shape)
    o = matmul(p, v)                        # v [..., Lk, Dv]

and replaced by one ``call_tir`` of ``schedules/cpu/attention.attention_kernel`` on 3-D views
(``G`` = the product of the batch dims); the scores never reach memory in full. Where q, k or v is
a head split of a projection (``[B, T, H*D]`` → ``[B, H, T, D]``, scaled by a constant or not:
:func:`_head_view`), the kernel reads the projection's output in place and takes the scale into its
epilogue: the head-major copies were a kernel each (BERT-base 1.4 ms per run, ViT-S 1.0; the
in-place read of K costs the kernel's packing 0.4-0.6 of that back, on an AVX-512 Xeon). Shapes must be
static float32; a softmax whose result is also used elsewhere (``output_attentions``) is left
alone, as are scores tiles too large for the cache (``rows × Lk`` above 1 MiB). Run before
``RowSoftmax`` (which would claim the softmax). ``fused`` counts the rewritten sites of the last call.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from hwcomp.relax_graph import (
    add_prim_func,
    const_array,
    mutate_functions,
    op_name,
    static_shape,
    use_counts,
)
from hwcomp.schedules.cpu.attention import (
    AttentionSpec,
    Bias,
    attention_kernel,
    panel_width,
    tile_rows,
)

from .row_softmax import last_axis_softmax_input, safe_softmax_input

_SCRATCH_BYTES = 1 << 20


def _f32(expr) -> bool:
    ty = getattr(expr, "ty", None)
    return isinstance(ty, relax.TensorType) and str(ty.dtype) == "float32" and static_shape(expr) is not None


class _Site:
    def __init__(self):
        self.steps: list[tuple[str, float | int]] = []
        self.biases: list[tuple[relax.Expr, Bias]] = []


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, opts: FuseAttention, var2val: dict, users: dict):
        super().__init__(mod)
        self.opts = opts
        self.var2val = var2val
        self.users = users
        self.fused = 0

    def _bound(self, expr):
        return self.var2val.get(expr) if isinstance(expr, relax.Var) else None

    def _single_use(self, var) -> bool:
        return isinstance(var, relax.Var) and self.users.get(var, 0) <= 1

    def _scores(self, expr, site: _Site, first: bool = False):
        """Walk from the softmax's input back to ``matmul(q, kt)``; epilogue steps in graph order.
        The softmax's input itself may have other users (the safe pattern's row test): it stays
        computed for them."""
        call = self._bound(expr)
        op = op_name(call)
        if op is None:
            return None
        if op == "relax.matmul":
            q, kt = call.args
            qs, ks = static_shape(q), static_shape(kt)
            if not (_f32(q) and _f32(kt)) or len(qs) < 3 or qs[:-2] != ks[:-2] or qs[-1] != ks[-2]:
                return None
            return q, kt
        if not first and not self._single_use(expr):
            return None
        if op == "relax.reshape":
            return self._scores(call.args[0], site)
        shape = static_shape(call)
        if op in ("relax.multiply", "relax.divide"):
            for x, c in ((call.args[0], call.args[1]), (call.args[1], call.args[0])):
                cv = const_array(c, self.var2val)
                if cv is not None and cv.size == 1 and static_shape(x) == shape:
                    found = self._scores(x, site)
                    if found is not None:
                        val = float(cv.reshape(()))
                        site.steps.append(("mul", 1.0 / val if op == "relax.divide" else val))
                        return found
                if op == "relax.divide":
                    break
            return None
        if op == "relax.add":
            for x, b in ((call.args[0], call.args[1]), (call.args[1], call.args[0])):
                if static_shape(x) != shape or not _f32(b):
                    continue
                found = self._scores(x, site)
                if found is not None:
                    site.steps.append(("add", len(site.biases)))
                    site.biases.append((b, Bias(static_shape(b), shape)))
                    return found
        return None

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if op_name(call) != "relax.matmul":
            return super().visit_call_(call)
        spec_args = self._match(call)
        if spec_args is None:
            return super().visit_call_(call)
        spec, operands, biases = spec_args
        bb = self.builder_
        G, L, Dv = spec.groups, spec.rows, spec.out_depth

        def view(x, shape):
            x = self.visit_expr(x)
            return x if static_shape(x) == shape else bb.emit(relax.op.reshape(x, shape))

        func = attention_kernel(spec, self.opts.vector_bits, self.opts.registers)
        gv = add_prim_func(bb, func, "attention")
        args = [view(x, shape) for x, shape in operands]
        args += [self.visit_expr(b) for b in biases]
        out = relax.call_tir(gv, args, relax.TensorType((G, L, Dv), "float32"))
        self.fused += 1
        shape = static_shape(call)
        return out if shape == (G, L, Dv) else relax.op.reshape(bb.emit(out), shape)

    def _match(self, call: relax.Call):
        p, v = call.args
        out_shape = static_shape(call)
        if not (_f32(p) and _f32(v)) or out_shape is None or len(static_shape(v)) < 3:
            return None
        e = p
        while True:  # views of the probabilities
            val = self._bound(e)
            if not self._single_use(e) or val is None:
                return None
            if op_name(val) == "relax.reshape" or (op_name(val) == "relax.broadcast_to"
                                                   and static_shape(val.args[0]) == static_shape(val)):
                e = val.args[0]
                continue
            break
        if op_name(val) == "relax.where":
            x, safe = safe_softmax_input(val, self.var2val), True
        else:
            x, safe = last_axis_softmax_input(val, self.var2val), False
        if x is None:
            return None
        site = _Site()
        found = self._scores(x, site, first=True)
        if found is None:
            return None
        q, kt = found
        qs, ks, vs, ps = static_shape(q), static_shape(kt), static_shape(v), static_shape(p)
        G, L, D, Lk, Dv = math.prod(qs[:-2]), qs[-2], qs[-1], ks[-1], vs[-1]
        if math.prod(vs[:-2]) != G or vs[-2] != Lk or ps[-2:] != (L, Lk) or math.prod(ps[:-2]) != G \
                or out_shape[-2:] != (L, Dv) or math.prod(out_shape[:-2]) != G:
            return None
        rows = tile_rows(self.opts.vector_bits, self.opts.registers, L)
        nr = panel_width(self.opts.vector_bits)
        if rows * (-(-Lk // nr) * nr) * 4 > _SCRATCH_BYTES:
            return None
        # operands read where their projections wrote them (one head count, shapes that agree)
        operands = [(q, (G, L, D)), (kt, (G, D, Lk)), (v, (G, Lk, Dv))]
        views = [_head_view(self, q, False), _head_view(self, kt, True), _head_view(self, v, False)]
        views = [vw if vw is not None and vw[1] * vw[3] == G and vw[2] == t and vw[4] == d else None
                 for vw, t, d in zip(views, (L, Lk, Lk), (D, D, Dv))]
        heads = {vw[3] for vw in views if vw is not None}
        steps, natural, scale = list(site.steps), [False] * 3, 1.0
        if len(heads) == 1:
            for n, vw in enumerate(views):
                if vw is not None:
                    base, b, t, h, d, s = vw
                    operands[n] = (base, (b, t, h * d))
                    natural[n] = True
                    scale *= s if n < 2 else 1.0
            if views[2] is not None and views[2][5] != 1.0:  # a scaled V scales the output: not folded
                operands[2], natural[2] = (v, (G, Lk, Dv)), False
            if scale != 1.0:
                steps.insert(0, ("mul", scale))
        try:
            spec = AttentionSpec(G, L, Lk, D, Dv, tuple(steps), tuple(b for _, b in site.biases), safe,
                                 self.opts.fast_exp, heads.pop() if any(natural) else 0, tuple(natural))
        except ValueError:
            return None
        return spec, operands, [b for b, _ in site.biases]


def _head_view(rw: _Rewriter, expr, transposed: bool):
    """``(base, B, T, H, D, scale)`` when ``expr`` is a head-major view of a projection's output:
    ``base`` (``[..., H*D]``, rows ``B*T``) reshaped to ``[B, T, H, D]``, permuted to ``[B, H, T, D]``
    (and on to ``[B, H, D, T]`` when ``transposed``: a ``Kᵀ``), with any reshapes, same-shape
    ``broadcast_to`` and multiplications by a scalar constant (their product: ``scale``) on the way;
    None otherwise. The kernel then reads ``base`` where the projection wrote it, instead of the
    head-major copy the view costs (a kernel of its own per operand)."""
    def scalar_factor(call) -> float | None:
        """The factor of ``x * c`` or ``x / c`` with ``c`` a scalar constant (x of the result's shape)."""
        c = const_array(call.args[1], rw.var2val)
        if c is None or c.size != 1 or static_shape(call.args[0]) != static_shape(call):
            return None
        return float(c.reshape(())) if op_name(call) == "relax.multiply" else 1.0 / float(c.reshape(()))

    scale, e, seen_t = 1.0, expr, False
    while True:
        val = rw._bound(e)
        op = op_name(val)
        if op in ("relax.multiply", "relax.divide"):
            f = scalar_factor(val)
            if f is None:
                return None
            scale *= f
        elif op == "relax.reshape" or (op == "relax.broadcast_to" and static_shape(val.args[0]) == static_shape(val)):
            pass
        elif op == "relax.permute_dims" and val.attrs.axes is not None:
            axes = tuple(int(a) for a in val.attrs.axes)
            if axes == (0, 1, 3, 2) and transposed and not seen_t:
                seen_t = True
            elif axes == (0, 2, 1, 3) and seen_t == transposed:
                break
            else:
                return None
        else:
            return None
        e = val.args[0]
    e = val.args[0]
    while op_name(rw._bound(e)) in ("relax.multiply", "relax.divide"):  # a scale on [B, T, H, D]
        f = scalar_factor(rw._bound(e))
        if f is None:
            return None
        scale *= f
        e = rw._bound(e).args[0]
    split = rw._bound(e)
    shape = static_shape(split) if split is not None else None
    if op_name(split) != "relax.reshape" or shape is None or len(shape) != 4:
        return None
    base = split.args[0]
    base_shape = static_shape(base)
    b, t, h, d = shape
    if not _f32(base) or base_shape is None or base_shape[-1] != h * d or math.prod(base_shape) != b * t * h * d:
        return None
    return base, b, t, h, d, scale


@tvm.transform.module_pass(opt_level=0, name="FuseAttention")
class FuseAttention:
    """``IRModule -> IRModule``: attention subgraphs onto the fused CPU kernel.

    ``vector_bits`` / ``registers``: the target's vector width and vector register count (size the
    register tiles); ``fast_exp``: the polynomial exp (else ``exp``).
    """

    def __init__(self, vector_bits: int = 256, registers: int = 16, fast_exp: bool = True):
        self.vector_bits = vector_bits
        self.registers = registers
        self.fast_exp = fast_exp
        self.fused = 0

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        users = {}
        for _, func in mod.functions_items():
            if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
                users.update(use_counts(func))
        mod, rewriters = mutate_functions(mod, lambda m, var2val: _Rewriter(m, self, var2val, users))
        self.fused = sum(r.fused for r in rewriters)
        return relax.transform.DeadCodeElimination()(mod) if self.fused else mod

    def __repr__(self) -> str:
        return f"FuseAttention(vector_bits={self.vector_bits}, registers={self.registers}, fast_exp={self.fast_exp})"


__all__ = ["FuseAttention"]
