"""ElementwiseBeforeReshape: element-wise ops move above the reshapes that separate them from a matmul.

``torch.export`` writes a Linear over ``[B, T, C]`` as ``reshape → matmul → add(bias) → reshape``,
so the ops after it (GELU, the residual add, GPT-2's ``gelu_new`` chain) meet a reshape, and TVM's
``FuseOps`` does not fuse an element-wise op into a matmul across one: each ran as a kernel of its
own, a full pass over memory (BERT-base: the GELU 0.9 ms and the residual add 0.5 ms per run, on
an AVX-512 Xeon). Element-wise ops commute with reshapes, so::

    y = reshape(a, s); z = gelu(y)             →  z' = gelu(a);         z = reshape(z', s)
    y = reshape(a, s); z = add(y, r)  (r: s)   →  z' = add(a, reshape(r, shape(a))); z = reshape(z', s)
    reshape(reshape(a, s1), s2)                →  reshape(a, s2), or ``a`` when s2 is a's shape

applied as the graph is walked in order, so a chain of element-wise ops moves up whole and the
reshape pair it leaves behind cancels. Only static shapes; a binary op whose other operand is not
a scalar or exactly the reshape's shape (a broadcast) is left as it is. Run before ``FastMath`` (which
turns GELU into a ``call_tir``) and ``FuseOps``. Idempotent.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from hwcomp.relax_graph import op_name, static_shape, use_counts

#: Ops applied element by element to one tensor operand (scalar operands, like clip's, pass through).
UNARY = frozenset({
    "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.relu", "relax.nn.silu", "relax.sigmoid", "relax.tanh",
    "relax.exp", "relax.erf", "relax.negative", "relax.sqrt", "relax.rsqrt", "relax.square", "relax.abs", "relax.clip",
})
#: Element-wise ops of two tensors (with broadcasting, which the rewrite only allows for scalars).
BINARY = frozenset({
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.power", "relax.maximum", "relax.minimum",
})


@mutator
class _Mover(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, uses: dict):
        super().__init__(mod)
        self.uses = uses
        self.moved = 0

    def _reshaped(self, expr):
        """``(a, shape of a)`` when ``expr`` is a variable bound to ``reshape(a, s)`` of a static ``a``
        used by nothing else: an op moves towards its producer, never towards a tensor other ops read
        too (a residual), which would undo the move of the op that consumed it (not idempotent), and
        gain nothing (FuseOps does not fuse into a producer with other consumers)."""
        if not isinstance(expr, relax.Var):
            return None
        val = self.lookup_binding(expr)
        if op_name(val) != "relax.reshape":
            return None
        src = val.args[0]
        shape = static_shape(src)
        if shape is None or self.uses.get(src, 1) > 1:  # a variable this pass made has one use
            return None
        return src, shape

    def _reshape(self, expr, shape):
        return relax.op.reshape(expr, relax.ShapeExpr([int(d) for d in shape]))

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        op = op_name(call)
        out = static_shape(call)
        if out is None:
            return call
        if op == "relax.reshape":
            inner = self._reshaped(call.args[0])
            if inner is None:
                return call
            src, shape = inner
            return src if shape == out else self._reshape(src, out)
        if op in UNARY:
            inner = self._reshaped(call.args[0])
            if inner is None:
                return call
            src, shape = inner
            moved = relax.Call(call.op, [src, *call.args[1:]], call.attrs, call.ty_args)
        elif op in BINARY and len(call.args) == 2:
            found = self._binary(call, out)
            if found is None:
                return call
            moved, shape = found
        else:
            return call
        self.moved += 1
        return self._reshape(self.builder_.emit(moved), out)

    def _binary(self, call: relax.Call, out: tuple[int, ...]):
        """``(op(a, other'), shape of a)`` (operands in their order) where one operand is ``reshape(a, out)`` and the
        other a scalar, a tensor of shape ``out`` (reshaped back to a's shape), or another reshape of
        a tensor of a's shape; None otherwise."""
        lhs, rhs = call.args
        for i, (this, other) in enumerate(((lhs, rhs), (rhs, lhs))):
            inner = self._reshaped(this)
            if inner is None or static_shape(this) != out:
                continue
            src, shape = inner
            other_shape = static_shape(other)
            if other_shape is None:
                continue
            if math.prod(other_shape) == 1 and len(other_shape) <= len(shape):
                new_other = other
            elif other_shape == out:
                back = self._reshaped(other)
                new_other = back[0] if back is not None and back[1] == shape else \
                    self.builder_.emit(self._reshape(other, shape))
            else:
                continue
            args = [src, new_other] if i == 0 else [new_other, src]
            return relax.Call(call.op, args, call.attrs, call.ty_args), shape
        return None


@tvm.transform.module_pass(opt_level=0, name="ElementwiseBeforeReshape")
class ElementwiseBeforeReshape:
    """``IRModule -> IRModule``: element-wise ops above the reshapes between them and their producer
    (see the module docstring). ``moved`` counts the ops moved by the last call."""

    def __init__(self):
        self.moved = 0

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.moved = 0
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, relax.Function):
                continue
            mover = _Mover(mod, use_counts(func))
            mover.builder_.update_func(gv, mover.visit_expr(func))
            mod = mover.builder_.get()
            self.moved += mover.moved
        return relax.transform.DeadCodeElimination()(mod)

    def __repr__(self) -> str:
        return "ElementwiseBeforeReshape()"
