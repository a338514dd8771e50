"""RowSoftmax: last-axis softmaxes become hwcomp's row softmax (CPU targets).

``relax.nn.softmax(x, axis=-1)`` over a static float32 shape becomes a ``call_tir`` of
``schedules/cpu/softmax.row_softmax``: rows padded to the row-reduction schedule's vector step
(attention over 197 tokens or 1500 frames gets vectorized max/sum instead of one scalar chain per
row) and one reciprocal per row instead of a divide per element. Run it before ``FastMath`` (which
would otherwise turn the op into TVM's ``fast_softmax``); ``fast_exp`` chooses the polynomial exp.
Other softmaxes (another axis, a symbolic shape, other dtypes) are left to TVM's legalization.

PyTorch's ``scaled_dot_product_attention`` exports as ``_safe_softmax``: the softmax, then
``where(all(x == -inf, -1), 0, softmax(x))``, whose row test is a second full pass over the scores
(an unvectorized row reduction at 197 tokens: 0.17 ms per ViT-small layer). That pattern becomes
one ``row_softmax(x, safe=True)``, which tells a fully masked row by its max.
Idempotent: the rewritten softmax is a ``call_tir``, which the pass does not match.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from hwcomp.relax_graph import const_array, mutate_functions, op_name, static_shape
from hwcomp.schedules.cpu.softmax import row_softmax


def _bound(expr, var2val: dict):
    return var2val.get(expr, expr) if isinstance(expr, relax.Var) else expr


def _is_const(expr, var2val: dict, value: float) -> bool:
    v = const_array(_bound(expr, var2val))
    return v is not None and v.size == 1 and float(v.reshape(())) == value


def last_axis_softmax_input(call, var2val: dict):
    """``x`` when ``call`` (or the call bound to it) is a static float32 last-axis softmax."""
    call = _bound(call, var2val)
    if op_name(call) != "relax.nn.softmax":
        return None
    x = call.args[0]
    shape = static_shape(x)
    if shape is None or not shape or str(x.ty.dtype) != "float32" \
            or int(call.attrs.axis) not in (-1, len(shape) - 1):
        return None
    return x


def safe_softmax_input(call: relax.Call, var2val: dict):
    """``x`` when ``call`` is ``where(all(x == -inf, -1), 0, softmax(x, -1))`` as PyTorch exports
    ``_safe_softmax``: ``logical_not(bool(max(int8(logical_not(x == -inf)), -1, keepdims)))``."""
    cond, zeros, sm = call.args
    x = last_axis_softmax_input(sm, var2val)
    z = _bound(zeros, var2val)
    if x is None or op_name(z) not in ("relax.full_like", "relax.zeros_like") \
            or (op_name(z) == "relax.full_like" and not _is_const(z.args[1], var2val, 0.0)):
        return None
    e = cond
    for op in ("relax.logical_not", "relax.astype", "relax.max", "relax.astype", "relax.logical_not"):
        e = _bound(e, var2val)
        if op_name(e) != op:
            return None
        if op == "relax.max":
            axes = e.attrs.axis
            ndim = len(static_shape(x))
            if not e.attrs.keepdims or axes is None or len(axes) != 1 or int(axes[0]) not in (-1, ndim - 1):
                return None
        e = e.args[0]
    e = _bound(e, var2val)
    if op_name(e) != "relax.equal" or not e.args[0].same_as(x) or not _is_const(e.args[1], var2val, -np.inf):
        return None
    return x


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, multiple: int, fast_exp: bool, var2val: dict):
        super().__init__(mod)
        self.multiple = multiple
        self.fast_exp = fast_exp
        self.var2val = var2val
        self.rewritten = 0
        # softmaxes a safe-softmax pattern consumes: left alone (unused after the rewrite)
        self.consumed = [_bound(v.args[2], var2val) for v in var2val.values()
                         if op_name(v) == "relax.where" and safe_softmax_input(v, var2val) is not None]

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        op = op_name(call)
        x = last_axis_softmax_input(call, self.var2val) if op == "relax.nn.softmax" else \
            safe_softmax_input(call, self.var2val) if op == "relax.where" else None
        if x is None or any(call.same_as(c) for c in self.consumed):
            return super().visit_call_(call)
        self.rewritten += 1
        return self.builder_.call_te(row_softmax, self.visit_expr(x), multiple=self.multiple, fast_exp=self.fast_exp,
                                     safe=op == "relax.where", primfunc_name_hint="softmax")


@tvm.transform.module_pass(opt_level=0, name="RowSoftmax")
class RowSoftmax:
    """``IRModule -> IRModule``: static float32 last-axis softmaxes onto ``row_softmax``.

    ``multiple``: the row reduction's vector step in elements (``RowReduction``: two vectors);
    ``fast_exp``: ``topi.fast_exp`` (else ``exp``). ``rewritten`` counts the softmaxes of the last
    call.
    """

    def __init__(self, multiple: int = 16, fast_exp: bool = True):
        if multiple < 1:
            raise ValueError(f"RowSoftmax: multiple must be positive, got {multiple}")
        self.multiple = multiple
        self.fast_exp = fast_exp
        self.rewritten = 0

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod, rewriters = mutate_functions(
            mod, lambda m, var2val: _Rewriter(m, self.multiple, self.fast_exp, var2val))
        self.rewritten = sum(r.rewritten for r in rewriters)
        # a safe softmax leaves the plain softmax and the row test unused
        return relax.transform.DeadCodeElimination()(mod) if self.rewritten else mod

    def __repr__(self) -> str:
        return f"RowSoftmax(multiple={self.multiple}, fast_exp={self.fast_exp})"
