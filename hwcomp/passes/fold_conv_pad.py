"""FoldConvPad: a zero ``nn.pad`` of the spatial dims feeding a convolution becomes the
convolution's own padding.

MobileNetV2 and EfficientNet from ``transformers`` pad "same"-style with an explicit ``F.pad`` before
each strided convolution. As a separate op the pad writes a padded copy of the activation, and for
the int8 quantizer it sits between two convolutions, so the first one cannot hand the second its
int8 output directly. Folded, the convolution pads (with the zero point, in int8) while it reads.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from hwcomp.relax_graph import op_name


def zero_spatial_pad(val) -> list[int] | None:
    """``(top, left, bottom, right)`` of a constant-zero ``nn.pad`` of an NCHW value's H and W, or None."""
    if op_name(val) != "relax.nn.pad" or str(val.attrs.pad_mode) != "constant" or float(val.attrs.pad_value) != 0.0:
        return None
    pw = [int(v) for v in val.attrs.pad_width]
    if len(pw) != 8 or any(pw[:4]) or min(pw) < 0:
        return None
    return [pw[4], pw[6], pw[5], pw[7]]


@mutator
class _Folder(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if op_name(call) != "relax.nn.conv2d" or str(call.attrs.data_layout) != "NCHW":
            return call
        x = call.args[0]
        val = self.lookup_binding(x) if isinstance(x, relax.Var) else None
        pad = zero_spatial_pad(val)
        if pad is None:
            return call
        at = call.attrs
        t, lft, b, r = (int(v) for v in at.padding)
        return relax.op.nn.conv2d(val.args[0], call.args[1], strides=at.strides,
                                  padding=[t + pad[0], lft + pad[1], b + pad[2], r + pad[3]], dilation=at.dilation,
                                  groups=at.groups, data_layout="NCHW", kernel_layout=str(at.kernel_layout),
                                  out_layout=str(at.out_layout), out_dtype=at.out_dtype)


@tvm.transform.module_pass(opt_level=0, name="FoldConvPad")
def FoldConvPad(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Fold zero spatial pads into the NCHW convolutions that read them (module docstring)."""
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)  # never mutate the caller's module
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            out[gv] = _Folder(out).visit_expr(func)
    return relax.transform.DeadCodeElimination()(out)
