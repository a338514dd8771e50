"""lift_constants: turn the weights bound into ``main`` back into parameters.

Compression passes work on weights bound as constants (they read and rewrite them); the artifact
keeps weights out of the compiled library so that the library stays small, the weights can be
hashed and shipped on their own, and a board loads them once.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir import GenericConst
from tvm.relax.expr_functor import PyExprMutator, mutator


@mutator
class _Lifter(PyExprMutator):
    def __init__(self, min_elements: int):
        super().__init__()
        self.min_elements = min_elements
        self.lifted: list[tuple[relax.Var, np.ndarray]] = []
        self._seen: dict = {}

    def visit_generic_const_(self, const: GenericConst) -> relax.Expr:  # noqa: N802
        arr = const.value
        if len(arr.shape) == 0 or int(np.prod(arr.shape)) < self.min_elements:
            return const
        key = const
        if key in self._seen:
            return self._seen[key]
        var = relax.Var(f"w{len(self.lifted)}", const.ty)
        self.lifted.append((var, arr.numpy()))
        self._seen[key] = var
        return var


def lift_constants(mod: tvm.IRModule, min_elements: int = 64) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """Replace constants of at least ``min_elements`` in ``main`` by trailing parameters.

    Returns the new module (``main(*inputs, *old_params, *lifted)``, attr ``num_input`` kept) and
    the lifted arrays by parameter name, in parameter order.
    """
    func = mod["main"]
    lifter = _Lifter(min_elements)
    body = lifter.visit_expr(func.body)
    params = list(func.params) + [v for v, _ in lifter.lifted]
    new_func = relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    out["main"] = new_func
    return out, {v.name: a for v, a in lifter.lifted}
