"""FoldBatchNorm: fold an inference batch-norm into the convolution before it, in NumPy.

``batch_norm(conv2d(x, W) [+ b], gamma, beta, mean, var)[0]`` with constant ``W``, ``b`` and
statistics becomes ``conv2d(x, W * a) + (beta + (b - mean) * a)`` with ``a = gamma / sqrt(var + eps)``
per output channel.
The fp32 path runs it in ``build.layout_for_target`` while the weights are still constants (later
the weights are lifted to parameters, and ``DecomposeOpsForInference`` would leave a per-element
subtract/divide/multiply/add on them in every conv's epilogue); the int8 quantizer runs it *before*
it quantizes the weights, so the scale lands in the int8 codes and the shift in the int32 bias, and
the requantizing epilogue can hand the next convolution its int8 input directly (no float
batch-norm between two int8 convolutions). Folding makes new weight constants; ``fold_batch_norm``'s
``on_fold(w, w_folded)`` tells the caller which weight became which (the quantizer keeps a layer's
parameter name through it, so ``QuantConfig.skip`` and the reports name batch-normed convs).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from hwcomp.relax_graph import const_array, op_name


@mutator
class _Folder(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, func: relax.Function, on_fold=None):
        super().__init__(mod)
        self.var2val = relax.analysis.get_var2val(func)
        self.on_fold = on_fold

    def _fold(self, item: relax.TupleGetItem) -> relax.Expr | None:
        if item.index != 0 or not isinstance(item.tuple_value, relax.Var):
            return None
        bn = self.var2val.get(item.tuple_value)
        if op_name(bn) != "relax.nn.batch_norm" or int(bn.attrs.axis) != 1:
            return None
        conv = self.var2val.get(bn.args[0]) if isinstance(bn.args[0], relax.Var) else None
        bias = None
        if op_name(conv) == "relax.add" and isinstance(conv.args[0], relax.Var):
            # a conv with its own bias: batch_norm(add(conv2d, bias)) (PyTorch's default Conv2d)
            bias = const_array(conv.args[1], self.var2val)
            conv = self.var2val.get(conv.args[0])
            if bias is None or op_name(conv) != "relax.nn.conv2d" or bias.size != int(conv.ty.shape.values[1]):
                return None
        if op_name(conv) != "relax.nn.conv2d" or str(conv.attrs.data_layout) != "NCHW" \
                or str(conv.attrs.kernel_layout) != "OIHW":
            return None
        w = const_array(conv.args[1], self.var2val)
        stats = [const_array(a, self.var2val) for a in bn.args[1:5]]
        if w is None or any(s is None for s in stats) or w.dtype != np.float32:
            return None
        gamma, beta, mean, var = (s.astype(np.float64).reshape(-1) for s in stats)
        if not bn.attrs.scale:
            gamma = np.ones_like(gamma)
        if not bn.attrs.center:
            beta = np.zeros_like(beta)
        a = gamma / np.sqrt(var + float(bn.attrs.epsilon))
        w2 = (w.astype(np.float64) * a.reshape(-1, 1, 1, 1)).astype(np.float32)
        b0 = 0.0 if bias is None else bias.astype(np.float64).reshape(-1)
        b2 = (beta + (b0 - mean) * a).astype(np.float32).reshape(1, -1, 1, 1)
        if self.on_fold is not None:
            self.on_fold(w, w2)
        x = self.visit_expr(conv.args[0])
        at = conv.attrs
        y = self.builder_.emit(relax.op.nn.conv2d(
            x, relax.const(w2), strides=at.strides, padding=at.padding, dilation=at.dilation, groups=at.groups,
            data_layout="NCHW", kernel_layout="OIHW", out_dtype=at.out_dtype))
        return relax.op.add(y, relax.const(b2))

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if isinstance(binding.value, relax.TupleGetItem):
            folded = self._fold(binding.value)
            if folded is not None:
                self.set_var_remap(binding.var, self.builder_.emit(folded))
                return
        super().visit_var_binding_(binding)


def fold_batch_norm(mod: tvm.IRModule, on_fold: Callable[[np.ndarray, np.ndarray], None] | None = None) -> tvm.IRModule:
    """:func:`FoldBatchNorm` with ``on_fold(w, w_folded)`` called for every conv weight it folds."""
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)  # never mutate the caller's module
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            out[gv] = _Folder(out, func, on_fold).visit_expr(func)
    return relax.transform.DeadCodeElimination()(out)


@tvm.transform.module_pass(opt_level=0, name="FoldBatchNorm")
def FoldBatchNorm(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Fold constant-statistics batch-norms into the convolutions they follow (module docstring)."""
    return fold_batch_norm(mod)
