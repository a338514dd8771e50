"""RowSoftmax: last-axis softmaxes become hwcomp's row softmax (CPU targets).

``relax.nn.softmax(x, axis=-1)`` over a static float32 shape becomes a ``call_tir`` of
``schedules/cpu/softmax.row_softmax``: rows padded to the row-reduction schedule's vector step
(attention over 197 tokens or 1500 frames gets vectorized max/sum instead of one scalar chain per
row) and one reciprocal per row instead of a divide per element. Run it before ``FastMath`` (which
would otherwise turn the op into TVM's ``fast_softmax``); ``fast_exp`` chooses the polynomial exp.
Other softmaxes (another axis, a symbolic shape, other dtypes) are left to TVM's legalization.
Idempotent: the rewritten softmax is a ``call_tir``, which the pass does not match.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from hwcomp.relax_graph import op_name, static_shape
from hwcomp.schedules.cpu.softmax import row_softmax


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, multiple: int, fast_exp: bool):
        super().__init__(mod)
        self.multiple = multiple
        self.fast_exp = fast_exp
        self.rewritten = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (TVM visitor name)
        if op_name(call) != "relax.nn.softmax":
            return super().visit_call_(call)
        x = call.args[0]
        shape = static_shape(x)
        if shape is None or not shape or str(x.ty.dtype) != "float32" \
                or int(call.attrs.axis) not in (-1, len(shape) - 1):
            return super().visit_call_(call)
        self.rewritten += 1
        return self.builder_.call_te(row_softmax, self.visit_expr(x), multiple=self.multiple,
                                     fast_exp=self.fast_exp, primfunc_name_hint="softmax")


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
        self.rewritten = 0
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, relax.Function):
                continue
            rewriter = _Rewriter(mod, self.multiple, self.fast_exp)
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
            mod = rewriter.builder_.get()
            self.rewritten += rewriter.rewritten
        return mod

    def __repr__(self) -> str:
        return f"RowSoftmax(multiple={self.multiple}, fast_exp={self.fast_exp})"
