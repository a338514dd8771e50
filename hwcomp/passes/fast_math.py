"""FastMath: transcendental ops → vectorizable polynomial approximations (for CPU targets).

LLVM has no vector ``erf``/``exp``/``tanh``: a vectorized loop calls libm's scalar ``erff`` once per
lane. On BERT-base that made GELU (12 x 128 x 3072 values) 25 ms of a 390 ms run and the
attention softmax another 8 ms. TVM's ``topi.fast_*`` functions are branch-free polynomials that
vectorize (absolute error about 1e-7 on float32). This pass rewrites ``gelu``/``gelu_tanh`` into
one elementwise function built on them (sigmoid and SiLU likewise), ``x ** 2`` and ``x ** 3`` into
multiplications (``powf`` is a scalar libm call per lane too: GPT-2's ``gelu_new``, which cubes its
input, took 2.6 ms per layer on AVX-512), then applies TVM's ``FastMathTransform`` (``softmax``,
``exp``, ``erf``, ``tanh``). Run it before legalization; ``CompileOptions.fast_math=False`` keeps
libm's functions.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, te, topi
from tvm.relax import PyExprMutator, expr_functor

from hwcomp.relax_graph import const_array, static_shape


def fast_gelu(x: te.Tensor) -> te.Tensor:
    """``x * (0.5 + 0.5 * erf(x / sqrt(2)))`` with ``topi.fast_erf``."""
    e = topi.fast_erf(topi.multiply(x, tvm.tirx.const(1 / math.sqrt(2), x.dtype)))
    return te.compute(x.shape, lambda *i: x(*i) * (tvm.tirx.const(0.5, x.dtype) + e(*i) * tvm.tirx.const(0.5, x.dtype)),
                      name="fast_gelu")


def fast_gelu_tanh(x: te.Tensor) -> te.Tensor:
    """``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` with ``topi.fast_tanh``."""
    c = tvm.tirx.const(math.sqrt(2 / math.pi), x.dtype)
    inner = te.compute(x.shape, lambda *i: c * (x(*i) + tvm.tirx.const(0.044715, x.dtype) * x(*i) * x(*i) * x(*i)),
                       name="gelu_inner")
    t = topi.fast_tanh(inner)
    half = tvm.tirx.const(0.5, x.dtype)
    return te.compute(x.shape, lambda *i: half * x(*i) * (tvm.tirx.const(1.0, x.dtype) + t(*i)), name="fast_gelu_tanh")


def fast_sigmoid(x: te.Tensor) -> te.Tensor:
    """``1 / (1 + exp(-x))`` with ``topi.fast_exp`` (libm's scalar ``expf`` per lane made the
    SiLU epilogue of EfficientNet's convolutions cost more than the convolutions)."""
    e = topi.fast_exp(topi.negative(x))
    one = tvm.tirx.const(1.0, x.dtype)
    return te.compute(x.shape, lambda *i: one / (one + e(*i)), name="fast_sigmoid")


def fast_silu(x: te.Tensor) -> te.Tensor:
    """``x * sigmoid(x)`` with :func:`fast_sigmoid`."""
    s = fast_sigmoid(x)
    return te.compute(x.shape, lambda *i: x(*i) * s(*i), name="fast_silu")


_GELU = {"relax.nn.gelu": fast_gelu, "relax.nn.gelu_tanh": fast_gelu_tanh,
         "relax.sigmoid": fast_sigmoid, "relax.nn.silu": fast_silu}


@expr_functor.mutator
class _GeluRewriter(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        op = getattr(call.op, "name", None)
        if op in _GELU and str(call.ty.dtype) == "float32":
            x = self.visit_expr(call.args[0])
            return self.builder_.call_te(_GELU[op], x, primfunc_name_hint=op.split(".")[-1])
        if op == "relax.power" and str(call.ty.dtype) == "float32":
            e = const_array(call.args[1])
            if e is not None and e.size == 1 and float(e.reshape(())) in (2.0, 3.0) \
                    and (e.ndim == 0 or static_shape(call.args[0]) == static_shape(call)):
                x = self.visit_expr(call.args[0])
                out = relax.op.multiply(x, x)
                if float(e.reshape(())) == 3.0:
                    out = relax.op.multiply(self.builder_.emit(out), x)
                return out
        return super().visit_call_(call)


@tvm.transform.module_pass(opt_level=0, name="hwcomp.FastMath")
class FastMath:
    """``IRModule → IRModule``: GELU, sigmoid, SiLU, softmax, exp, erf and tanh become polynomial
    approximations."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        rewriter = _GeluRewriter(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        mod = rewriter.builder_.get()
        return relax.transform.FastMathTransform()(mod)
