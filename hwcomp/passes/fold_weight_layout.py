"""FoldWeightLayout: evaluate layout ops applied to constant weights at compile time, in NumPy.

The torch importer emits ``matmul(x, permute_dims(W))`` for every Linear. Once weights are bound as
constants the transpose can be done once here instead of on every call; NumPy does it in
microseconds where relax.transform.FoldConstant would compile a kernel per weight.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir import GenericConst
from tvm.relax.expr_functor import PyExprMutator, mutator


def _np(c: GenericConst) -> np.ndarray:
    return c.value.numpy()


def _const(a: np.ndarray) -> GenericConst:
    return relax.const(np.ascontiguousarray(a))


@mutator
class _Folder(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (TVM visitor name)
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or not call.args or not isinstance(call.args[0], GenericConst):
            return call
        name, x = call.op.name, call.args[0]
        if name == "relax.permute_dims":
            axes = call.attrs.axes
            axes = None if axes is None else [int(a) for a in axes]
            return _const(np.transpose(_np(x), axes))
        if name == "relax.reshape" and isinstance(call.ty.shape, relax.ShapeExpr):
            shape = [int(d) for d in call.ty.shape.values]
            return _const(_np(x).reshape(shape))
        if name == "relax.astype":
            return _const(_np(x).astype(str(call.attrs.dtype)))
        return call


@tvm.transform.module_pass(opt_level=0, name="FoldWeightLayout")
def FoldWeightLayout(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 (pass naming as in TVM)
    """Fold ``permute_dims``/``reshape``/``astype`` of constants into new constants."""
    mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)  # never mutate the caller's module
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mod[gv] = _Folder().visit_expr(func)
    return relax.transform.DeadCodeElimination()(mod)
