"""The IRModule rewrite of :class:`~hwcomp.passes.dense_to_bsr.DenseToBSR`: each planned site's chain
becomes ``call_tir(bsr_matmul, x2d, data, indices, indptr[, bias])`` (NCHW → ``[pixels, C]`` or im2col
first for a conv, and back), with the packed weights as constants and the target backend's kernel."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from hwcomp.relax_graph import add_prim_func, static_shape
from hwcomp.schedules.backends import backend_for
from hwcomp.schedules.bsr_spec import BsrSpec
from hwcomp.target import Target

from .match import rows


def bsr_primfunc(target: Target, spec: BsrSpec, knobs=None):
    """The target backend's BSR kernel for one :class:`~hwcomp.schedules.bsr_spec.BsrSpec`
    (:func:`hwcomp.schedules.backends.backend_for`)."""
    return backend_for(target).bsr_kernel(target, spec, knobs)


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, plan: dict, emit_site: Callable):
        super().__init__(mod)
        self.plan = plan
        self.emit_site = emit_site

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        site = self.plan.get(binding.var)
        if site is None:
            return super().visit_var_binding_(binding)
        value = self.builder_.normalize(self.emit_site(self, site))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, value))


def emit_site(rw: _Rewriter, planned, kernel: Callable) -> relax.Expr:
    site, bsr, knobs = planned
    bb = rw.builder_
    n, k = site.weight.shape
    x = rw.visit_expr(site.x)
    m = rows(site)
    if site.kind == "conv1x1":
        x = bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
    elif site.kind == "conv":
        x = bb.emit_te(site.conv.im2col(site.x_shape, site.out_shape[2:]), x, primfunc_name_hint="im2col")
    if static_shape(x) != (m, k):
        x = bb.emit(relax.op.reshape(x, (m, k)))
    func = kernel(BsrSpec(m, k, n, bsr.block, site.bias is not None, site.activation), knobs)
    gv = add_prim_func(bb, func, "bsr_matmul")
    args = [x, relax.const(bsr.data), relax.const(bsr.indices), relax.const(bsr.indptr)]
    if site.bias is not None:
        args.append(relax.const(np.ascontiguousarray(site.bias, dtype="float32")))
    y = relax.call_tir(gv, args, relax.TensorType((m, n), "float32"))
    if site.kind != "matmul":
        nb, _, ho, wo = site.out_shape
        y = bb.emit(y)
        y = bb.emit(relax.op.reshape(y, (nb, ho, wo, n)))
        return relax.op.permute_dims(y, [0, 3, 1, 2])
    if tuple(site.out_shape) != (m, n):
        y = bb.emit(y)
        return relax.op.reshape(y, site.out_shape)
    return y


def rewrite_function(mod: tvm.IRModule, gv, func: relax.Function, plan: dict, kernel: Callable) -> tvm.IRModule:
    """``mod`` with ``func`` (bound to ``gv``) rewritten: ``plan`` maps a site's root var to
    ``(site, bsr, knobs)``; ``kernel(spec, knobs)`` makes each PrimFunc from a
    :class:`~hwcomp.schedules.bsr_spec.BsrSpec`."""
    rewriter = _Rewriter(mod, plan, lambda rw, planned: emit_site(rw, planned, kernel))
    new_func = rewriter.visit_expr(func)
    out = rewriter.builder_.get()
    out[gv] = new_func
    return out


__all__ = ["bsr_primfunc", "emit_site", "rewrite_function"]
