"""PackDenseWeights: matmuls by a constant weight read it pre-packed in column panels (CPU targets).

``matmul(x, W)`` and a torch Linear's ``matmul(x, permute_dims(W))``, with ``W`` a float32
constant of at least one panel of columns, become ``schedules/cpu/dense.dense_packed`` over the
packed weight (``[ceil(N/x), K, x]``, packed here in NumPy; the last panel zero-padded where the
padding adds at most ``MAX_PADDING``). Bias and activation stay separate ops for ``FuseOps`` to fuse as the product's epilogue.
Leading dimensions may be symbolic (a dynamic sequence length). Idempotent: the packed product is
a ``call_tir``, which the pass does not match.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from hwcomp.relax_graph import const_array, mutate_functions, op_name, static_shape
from hwcomp.schedules.cpu.dense import dense_packed, pack_dense_weight

#: Most padded columns per column: a last panel of zeros (MobileViT's 144 and 240 columns in 32-wide
#: panels, 11 % and 7 % more work) still beat the unpacked weight (AVX-512 Xeon, 2 threads:
#: 1024x144x432 0.60 -> 0.48 ms, 64x480x240 0.068 -> 0.057, a 1000-class head over 197 rows
#: 0.96 -> 0.59); 48 columns in two panels of 32 (33 % more) are left unpacked.
MAX_PADDING = 1.25


def _float32(expr) -> bool:
    ty = getattr(expr, "ty", None)
    return isinstance(ty, relax.TensorType) and str(ty.dtype) == "float32"


@mutator
class _Packer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, panels: tuple[int, ...], var2val: dict):
        super().__init__(mod)
        self.panels = panels
        self.var2val = var2val
        self.packed = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if op_name(call) != "relax.matmul" or len(call.args) != 2:
            return super().visit_call_(call)
        x, w_expr = call.args
        w = const_array(w_expr, self.var2val)
        x_ty = getattr(x, "ty", None)
        if w is None or w.ndim != 2 or w.dtype != np.float32 or not _float32(x) or not _float32(call) \
                or not isinstance(x_ty, relax.TensorType) or x_ty.ndim < 1:
            return super().visit_call_(call)
        k, n = w.shape
        shape = x_ty.shape.values if isinstance(x_ty.shape, relax.ShapeExpr) else None
        panel = choose_panel(n, self.panels)
        if shape is None or static_shape(relax.TensorType([shape[-1]], "float32")) != (k,) or panel is None:
            return super().visit_call_(call)
        self.packed += 1
        return self.builder_.call_te(dense_packed, self.visit_expr(x), relax.const(pack_dense_weight(w, panel)),
                                     n, primfunc_name_hint="dense_packed")


def choose_panel(n: int, panels: tuple[int, ...]) -> int | None:
    """The panel width for ``n`` columns: of ``panels`` (preferred first), the one that pads fewest
    columns (768 and 1000 columns: 48 of (48, 32); 64: 32), within ``MAX_PADDING`` and at most ``n``;
    None when none fits."""
    fits = [(-(-n // p) * p, i, p) for i, p in enumerate(panels) if p <= n and -(-n // p) * p <= MAX_PADDING * n]
    return min(fits)[2] if fits else None


@tvm.transform.module_pass(opt_level=0, name="PackDenseWeights")
class PackDenseWeights:
    """``IRModule -> IRModule``: constant-weight float32 matmuls onto panel-packed weights.

    ``panel``: columns per panel, or the widths to choose from per matmul, preferred first
    (``Target.dense_panels``; see :func:`choose_panel`). ``packed`` counts the matmuls rewritten by
    the last call.
    """

    def __init__(self, panel: int | tuple[int, ...] = 16):
        panels = (panel,) if isinstance(panel, int) else tuple(panel)
        if not panels or min(panels) < 1:
            raise ValueError(f"PackDenseWeights: panel widths must be positive, got {panel}")
        self.panels = panels
        self.packed = 0

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod, packers = mutate_functions(mod, lambda m, var2val: _Packer(m, self.panels, var2val))
        self.packed = sum(p.packed for p in packers)
        return relax.transform.DeadCodeElimination()(mod)

    def __repr__(self) -> str:
        return f"PackDenseWeights(panel={self.panels[0] if len(self.panels) == 1 else self.panels})"
