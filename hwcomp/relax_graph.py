"""Helpers for reading a Relax graph: the op a call applies, a static tensor shape, a constant's value,
how often each variable is used; and for rewriting one (:func:`mutate_functions`).

Shared by the compression passes (``hwcomp.passes``) and the quantizer (``hwcomp.quantize.graph``).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir import GenericConst


def op_name(expr) -> str | None:
    """``"relax.matmul"`` etc. for a call to a registered op; None otherwise."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def static_shape(expr_or_ty) -> tuple[int, ...] | None:
    """The shape of a tensor expression (or of a ``TensorType``) when every dimension is a constant."""
    ty = expr_or_ty.ty if hasattr(expr_or_ty, "ty") and not isinstance(expr_or_ty, relax.TensorType) else expr_or_ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    out = []
    for v in ty.shape.values:
        if not isinstance(v, tvm.tirx.IntImm):
            return None
        out.append(int(v.value))
    return tuple(out)


def vars_in(expr) -> list:
    """Every use of a variable in ``expr``, in order (a variable used twice is listed twice): through
    calls, tuples, tuple items and a ``SeqExpr``'s bindings and result (binding targets are not uses)."""
    out = []

    def visit(e):
        if isinstance(e, relax.Var):
            out.append(e)
        elif isinstance(e, relax.Call):
            for a in e.args:
                visit(a)
        elif isinstance(e, relax.Tuple):
            for f in e.fields:
                visit(f)
        elif isinstance(e, relax.TupleGetItem):
            visit(e.tuple_value)
        elif isinstance(e, relax.SeqExpr):
            for blk in e.blocks:
                for b in blk.bindings:
                    visit(b.value)
            visit(e.body)

    visit(expr)
    return out


def use_counts(func: relax.Function) -> dict:
    """Var -> how many times the bindings and the result of ``func`` use it."""
    uses: dict = {}
    for v in vars_in(func.body):
        uses[v] = uses.get(v, 0) + 1
    return uses


def const_array(expr, var2val: dict | None = None) -> np.ndarray | None:
    """The value of ``expr`` if it is a constant. With ``var2val`` (``relax.analysis.get_var2val``), also
    through bindings of ``reshape`` / ``permute_dims`` of a constant (the reshaped / transposed value)."""
    if isinstance(expr, GenericConst):
        return expr.value.numpy()
    if var2val is not None and isinstance(expr, relax.Var) and expr in var2val:
        val = var2val[expr]
        op = op_name(val)
        if op in ("relax.reshape", "relax.permute_dims"):
            inner = const_array(val.args[0], var2val)
            if inner is None:
                return None
            if op == "relax.reshape":
                shape = static_shape(val)
                return None if shape is None else inner.reshape(shape)
            axes = val.attrs.axes
            return np.transpose(inner, None if axes is None else [int(a) for a in axes])
    return None


def add_prim_func(bb: relax.BlockBuilder, func: tvm.tirx.PrimFunc, name: str) -> relax.GlobalVar:
    """Add a kernel to the module being built, without the symbol name a script or TE gave it: every
    kernel gets its own when the module is built (two with one symbol would clash)."""
    if func.attrs is not None and "global_symbol" in func.attrs:
        func = func.without_attr("global_symbol")
    return bb.add_func(func, name)


def mutate_functions(mod: tvm.IRModule, make) -> tuple[tvm.IRModule, list]:
    """Each Relax function of ``mod`` through a fresh mutator ``make(mod, var2val)`` (built on the
    module as rewritten so far, with ``relax.analysis.get_var2val`` of that function); returns the
    rewritten module and the mutators, for the counts they kept."""
    used = []
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function):
            continue
        mutator = make(mod, relax.analysis.get_var2val(func))
        mutator.builder_.update_func(gv, mutator.visit_expr(func))
        mod = mutator.builder_.get()
        used.append(mutator)
    return mod, used
