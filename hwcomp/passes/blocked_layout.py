"""BlockedLayout: move convolutional regions to the blocked channel layout NCHW[x]c (CPU targets).

Each ``conv2d`` (NCHW, constant OIHW weight, groups 1 or depthwise) becomes hwcomp's blocked
convolution (``schedules/cpu/conv.py``) with its weight packed here, once, as a constant. Values
stay blocked through the ops that do not care about the layout — element-wise ops (bias, folded
batch-norm, activations, residual adds, squeeze-and-excitation scales), max/avg pooling and the
spatial mean — so a layout transform appears only at a region's borders: where an NCHW value enters
(the model input, a reshape's output) and where a blocked value leaves for an op that needs NCHW.
Consecutive convolutions exchange blocked tensors directly. A stride-1 3x3 convolution with enough
output tiles becomes Winograd F(4, 3) or F(2, 3) (``schedules/cpu/winograd.py``: input transform,
the blocked 1x1 conv per tile position, output transform with the epilogue), inside the region.

Channel counts that are not a multiple of the block are padded: zero weights for padded input
channels (whatever the padded lanes hold never reaches a real output), constants padded with 1
(finite lanes through multiply, add and divide-by-constant). Ops that could turn a padded lane
into inf/NaN (division by an activation, log, rsqrt) end the region.

The pass reads constants only, never builds or times anything, and is idempotent: its output has
no ``conv2d`` left that it would convert.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.ir import GenericConst
from tvm.relax.expr_functor import PyExprMutator, mutator

from hwcomp.passes.fold_conv_pad import zero_spatial_pad
from hwcomp.relax_graph import add_prim_func
from hwcomp.relax_graph import static_shape as _shape
from hwcomp.schedules.cpu.conv import conv2d_nchwc, depthwise_nchwc
from hwcomp.schedules.cpu.winograd import (
    pack_winograd_weight,
    use_winograd,
    winograd_input_func,
    winograd_input_shape,
    winograd_output_func,
)

# Element-wise ops a blocked value passes through (finite in, finite out, any shape).
_UNARY = frozenset({
    "relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.tanh", "relax.nn.silu", "relax.nn.gelu",
    "relax.nn.gelu_tanh", "relax.erf", "relax.negative", "relax.abs", "relax.nn.leakyrelu",
    "relax.nn.prelu_scalar",
})
_BINARY = frozenset({"relax.add", "relax.subtract", "relax.multiply", "relax.maximum", "relax.minimum"})
_POOL = frozenset({"relax.nn.max_pool2d", "relax.nn.avg_pool2d"})
# Constant sub-expressions folded in NumPy (batch-norm's decomposition builds its scale this way).
_CONST_FOLD = {
    "relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
    "relax.divide": np.divide, "relax.sqrt": np.sqrt, "relax.rsqrt": lambda a: 1.0 / np.sqrt(a),
}


def _dtype(expr) -> str | None:
    ty = getattr(expr, "ty", None)
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


def to_blocked(x: te.Tensor, block: int) -> te.Tensor:
    """``[N, C, H, W]`` → ``[N, ceil(C/block), H, W, block]``, padded channels zero."""
    n, c, h, w = (int(d) for d in x.shape)
    cb = -(-c // block)
    return te.compute(
        (n, cb, h, w, block),
        lambda i, j, y, z, v: tirx.if_then_else(j * block + v < c, x[i, tirx.min(j * block + v, c - 1), y, z],
                                                tirx.const(0, x.dtype)),
        name="to_blocked")


def from_blocked(x: te.Tensor, channels: int) -> te.Tensor:
    """``[N, C/x, H, W, x]`` → ``[N, channels, H, W]`` (padded channels dropped)."""
    n, _, h, w, block = (int(d) for d in x.shape)
    return te.compute((n, channels, h, w), lambda i, c, y, z: x[i, c // block, y, z, c % block],
                      name="from_blocked")


def pack_conv_weight(w: np.ndarray, block_in: int, block_out: int) -> np.ndarray:
    """OIHW → ``[O/xo, I/xi, KH, KW, xi, xo]``, O and I zero-padded to whole blocks."""
    o, i, kh, kw = w.shape
    op, ip = -(-o // block_out) * block_out, -(-i // block_in) * block_in
    w = np.pad(w, ((0, op - o), (0, ip - i), (0, 0), (0, 0)))
    w = w.reshape(op // block_out, block_out, ip // block_in, block_in, kh, kw)
    return np.ascontiguousarray(w.transpose(0, 2, 4, 5, 3, 1))


def pack_depthwise_weight(w: np.ndarray, block: int) -> np.ndarray:
    """``[C, 1, KH, KW]`` → ``[C/x, KH, KW, x]``, C zero-padded to whole blocks."""
    c, _, kh, kw = w.shape
    cp = -(-c // block) * block
    w = np.pad(w[:, 0], ((0, cp - c), (0, 0), (0, 0)))
    return np.ascontiguousarray(w.reshape(cp // block, block, kh, kw).transpose(0, 2, 3, 1))


def pack_channel_const(v: np.ndarray, channels: int, block: int) -> np.ndarray | None:
    """A per-channel constant broadcast against ``[N, C, H, W]`` as ``[1, C/x, 1, 1, x]`` (padded
    with 1); a scalar as it is; None for any other shape."""
    if v.size == 1:
        return v
    shape = [1] * (4 - v.ndim) + list(v.shape) if v.ndim <= 4 else None
    if shape is None or shape[0] != 1 or shape[2:] != [1, 1] or shape[1] != channels:
        return None
    cp = -(-channels // block) * block
    flat = np.concatenate([v.reshape(channels), np.ones(cp - channels, v.dtype)])
    return np.ascontiguousarray(flat.reshape(1, cp // block, 1, 1, block))


@mutator
class _Blocker(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, block: int, winograd: bool = True):
        super().__init__(mod)
        self.block = block
        self.winograd = winograd
        self.winograd_convs = 0
        self.blocked: dict[relax.Var, tuple[relax.Var, int]] = {}  # NCHW var -> (blocked var, C)
        self.consts: dict[relax.Var, np.ndarray] = {}
        self.var2val: dict = {}
        self.converted = 0

    # -- constants ---------------------------------------------------------------------------
    def _const(self, expr) -> np.ndarray | None:
        if isinstance(expr, GenericConst):
            return expr.value.numpy()
        if isinstance(expr, relax.Var):
            return self.consts.get(expr)
        return None

    def _fold_const(self, call: relax.Call, shape: list[int] | None) -> np.ndarray | None:
        name = call.op.name
        args = [self._const(a) for a in call.args[:1 if name in ("relax.reshape", "relax.expand_dims") else None]]
        if not args or any(a is None for a in args):
            return None
        if name in _CONST_FOLD:
            return np.asarray(_CONST_FOLD[name](*args)).astype(args[0].dtype)
        if name == "relax.expand_dims":
            out = args[0]
            for ax in sorted(int(a) % (out.ndim + len(call.attrs.axis)) for a in call.attrs.axis):
                out = np.expand_dims(out, ax)
            return out
        if name == "relax.reshape" and shape is not None:
            return args[0].reshape(shape)
        return None

    # -- region borders ----------------------------------------------------------------------
    def _blocked_input(self, x: relax.Expr, block: int | None = None) -> tuple[relax.Expr, int] | None:
        """``x`` (an NCHW value) in the blocked layout: the region's own value, or a transform."""
        block = block or self.block
        if isinstance(x, relax.Var) and x in self.blocked:
            bx, c = self.blocked[x]
            if _shape(bx)[-1] == block:
                return bx, c
        shape = _shape(x)
        if shape is None or len(shape) != 4 or _dtype(x) != "float32":
            return None
        x = self.visit_expr(x)
        return self.builder_.emit_te(to_blocked, x, block, primfunc_name_hint="to_blocked"), shape[1]

    def _leave(self, var: relax.Var, bvar: relax.Var, channels: int) -> relax.Var:
        """Record ``bvar`` as the blocked form of ``var`` and bind ``var`` to its NCHW form for
        consumers outside the region (dead code, removed, where there are none). A dataflow
        block's output var is seen after the block, where its blocked form is not: the region
        ends there."""
        call = self.builder_.call_te(from_blocked, bvar, channels, primfunc_name_hint="from_blocked")
        if isinstance(var, relax.DataflowVar) or not self.builder_.current_block_is_dataflow():
            self.blocked[var] = (bvar, channels)
            return self.builder_.emit(call)
        return self.builder_.emit_output(call)

    # -- rewrites ----------------------------------------------------------------------------
    def _block_of(self, x) -> int | None:
        """The block of ``x``'s blocked form, None when it has none."""
        if isinstance(x, relax.Var) and x in self.blocked:
            return _shape(self.blocked[x][0])[-1]
        return None

    def _fold_pad(self, x: relax.Expr, padding: list[int]) -> tuple[relax.Expr, list[int]]:
        """A zero ``nn.pad`` of the spatial dims feeding a convolution (MobileNetV2's TF-style
        "same" padding) becomes the convolution's own padding: no padded copy in memory, and the
        region does not end at the pad."""
        val = self.var2val.get(x) if isinstance(x, relax.Var) else None
        pad = zero_spatial_pad(val)
        if pad is None:
            return x, padding
        return val.args[0], [p + q for p, q in zip(padding, pad)]

    def _conv(self, call: relax.Call):
        a = call.attrs
        if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) != ("NCHW", "OIHW", "NCHW"):
            return None
        w = self._const(call.args[1])
        shape = _shape(call.args[0])
        if w is None or shape is None or len(shape) != 4 or _dtype(call.args[0]) != "float32" \
                or w.dtype != np.float32 or (a.out_dtype and str(a.out_dtype) not in ("float32", "")):
            return None
        data, padding = self._fold_pad(call.args[0], [int(p) for p in a.padding])
        groups, c, o = int(a.groups), shape[1], w.shape[0]
        args = ([int(s) for s in a.strides], padding, [int(d) for d in a.dilation])
        have = self._block_of(data)
        if groups == 1:
            # a blocked input is read in its own block (no re-blocking); a thin NCHW input (an RGB
            # image) is blocked by its channel count rather than padded to a whole block
            block_in = have or (min(self.block, c))
            bx = self._blocked_input(data, block_in)
            if bx is None:
                return None
            m = self._winograd_tile(w, shape, args, block_in) if self.winograd else 0
            if m:
                out = self._winograd(bx[0], w, m, padding, block_in)
                self.converted += 1
                return out, o
            # fewer channels than one block (MobileNetV2's and EfficientNet's 16 and 24): the weight
            # covers the real channels only, and the conv reduces over those, not over the zeros
            packed = pack_conv_weight(w, min(block_in, c), self.block)
            out = self.builder_.emit_te(conv2d_nchwc, bx[0], relax.const(packed), *args,
                                        primfunc_name_hint="conv2d_nchwc")
        elif groups == c == o and w.shape[1] == 1:
            block = have or self.block
            bx = self._blocked_input(data, block)
            if bx is None:
                return None
            out = self.builder_.emit_te(depthwise_nchwc, bx[0], relax.const(pack_depthwise_weight(w, block)), *args,
                                        primfunc_name_hint="depthwise_nchwc")
        else:
            # grouped: every group a whole number of blocks (RegNet's 8-wide groups: blocks of 8 —
            # a quarter of AVX-512's 32-channel block, where the NCHW fallback ran 2.4x the best peer)
            width_in, width_out = c // groups, o // groups
            sizes = (self.block, self.block // 2) + ((self.block // 4,) if self.block >= 32 else ())
            block = next((b for b in sizes if b >= 4 and width_in % b == 0 and width_out % b == 0), None)
            if block is None or c % groups or o % groups:
                return None
            bx = self._blocked_input(data, block)
            if bx is None:
                return None
            packed = pack_conv_weight(w, block, block)
            out = self.builder_.emit_te(conv2d_nchwc, bx[0], relax.const(packed), *args, groups,
                                        primfunc_name_hint="conv2d_nchwc")
        self.converted += 1
        return out, o

    def _winograd_tile(self, w: np.ndarray, shape, args, block_in: int) -> int:
        """The Winograd tile for this conv (``schedules/cpu/winograd.use_winograd``), 0 for direct."""
        strides, padding, dilation = args
        if w.shape[2:] != (3, 3) or strides != [1, 1] or dilation != [1, 1] or block_in != self.block:
            return 0
        oh, ow = shape[2] + padding[0] + padding[2] - 2, shape[3] + padding[1] + padding[3] - 2
        return use_winograd(shape[1], w.shape[0], oh, ow, self.block)

    def _winograd(self, bx: relax.Expr, w: np.ndarray, m: int, padding: list[int], block_in: int) -> relax.Var:
        """A 3x3 stride-1 conv as Winograd F(m, 3): input transform, the per-position products as
        the grouped blocked 1x1 conv, output transform (``schedules/cpu/winograd.py``)."""
        shape = _shape(bx)
        n, _, h, wd, _ = shape
        oh, ow = h + padding[0] + padding[2] - 2, wd + padding[1] + padding[3] - 2
        v = self._call(winograd_input_func(shape, m, padding), [bx], winograd_input_shape(shape, m, padding),
                       "winograd_input")
        u = relax.const(pack_winograd_weight(w, m, block_in, self.block))
        prod = self.builder_.emit_te(conv2d_nchwc, v, u, [1, 1], [0, 0, 0, 0], [1, 1], (m + 2) ** 2,
                                     primfunc_name_hint="winograd_product")
        self.winograd_convs += 1
        out = winograd_output_func(_shape(prod), m, n, oh, ow)
        return self._call(out, [prod], [n, _shape(prod)[1] // (m + 2) ** 2, oh, ow, self.block], "winograd_output")

    def _call(self, func, args: list, shape: list[int], name: str) -> relax.Var:
        gv = add_prim_func(self.builder_, func, name)
        return self.builder_.emit(relax.call_tir(gv, args, relax.TensorType(shape, "float32")))

    def _conv1d(self, binding: relax.VarBinding, call: relax.Call) -> bool:
        """A ``conv1d`` (NCW/OIW, constant weight, groups 1: Whisper's audio front end) as the
        blocked conv2d over a ``[N, C, 1, L]`` view, back to NCW right after (its 3-D epilogue is not
        a region). Emits the result bound to ``binding.var``'s uses; False where it does not apply."""
        a = call.attrs
        w = self._const(call.args[1])
        shape = _shape(call.args[0])
        if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) != ("NCW", "OIW", "NCW") \
                or int(a.groups) != 1 or w is None or w.dtype != np.float32 or shape is None or len(shape) != 3 \
                or _dtype(call.args[0]) != "float32" or not isinstance(binding.var, relax.DataflowVar) \
                and self.builder_.current_block_is_dataflow():
            return False
        n, c, length = shape
        block_in = min(self.block, c)
        x4 = self.builder_.emit(relax.op.reshape(self.visit_expr(call.args[0]), [n, c, 1, length]))
        bx = self.builder_.emit_te(to_blocked, x4, block_in, primfunc_name_hint="to_blocked")
        packed = pack_conv_weight(w[:, :, None, :], block_in, self.block)
        (left, right), stride, dilation = [int(p) for p in a.padding], int(a.strides[0]), int(a.dilation[0])
        out = self.builder_.emit_te(conv2d_nchwc, bx, relax.const(packed), [1, stride], [0, left, 0, right],
                                    [1, dilation], primfunc_name_hint="conv2d_nchwc")
        o = w.shape[0]
        nchw = self.builder_.emit_te(from_blocked, out, o, primfunc_name_hint="from_blocked")
        ncw = self.builder_.emit(relax.op.reshape(nchw, [n, o, _shape(nchw)[-1]]))
        self.set_var_remap(binding.var, ncw)
        self.converted += 1
        return True

    def _elementwise(self, call: relax.Call):
        out_shape = _shape(call)
        if out_shape is None or len(out_shape) != 4:
            return None
        channels = block = None
        for arg in call.args:
            if isinstance(arg, relax.Var) and arg in self.blocked:
                channels, block = self.blocked[arg][1], self._block_of(arg)
                break
        if channels is None or out_shape[1] != channels:
            return None
        args = []
        for arg in call.args:
            if not isinstance(getattr(arg, "ty", None), relax.TensorType):
                args.append(arg)  # clip's bounds, a PrimValue
                continue
            v = self._const(arg)
            if v is not None:
                packed = pack_channel_const(v, channels, block)
                if packed is None:
                    return None
                args.append(relax.const(packed))
                continue
            shape = _shape(arg)
            if shape is None or len(shape) != 4 or shape[1] != channels:
                return None
            bx = self._blocked_input(arg, block)
            if bx is None:
                return None
            args.append(bx[0])
        return self.builder_.emit(relax.Call(call.op, args, call.attrs)), channels

    def _pool(self, call: relax.Call):
        a = call.attrs
        x = call.args[0]
        if str(a.layout) != "NCHW" or str(a.out_layout) != "NCHW" or not (isinstance(x, relax.Var) and x in self.blocked):
            return None
        bx, channels = self.blocked[x]
        layout = f"NCHW{_shape(bx)[-1]}c"
        kw = {"pool_size": [int(p) for p in a.pool_size], "strides": [int(s) for s in a.strides],
              "padding": [int(p) for p in a.padding], "dilation": [int(d) for d in a.dilation],
              "ceil_mode": bool(a.ceil_mode), "layout": layout, "out_layout": layout}
        if call.op.name == "relax.nn.avg_pool2d":
            kw["count_include_pad"] = bool(a.count_include_pad)
            out = relax.op.nn.avg_pool2d(bx, **kw)
        else:
            out = relax.op.nn.max_pool2d(bx, **kw)
        return self.builder_.emit(out), channels

    def _mean(self, call: relax.Call):
        x = call.args[0]
        if not (isinstance(x, relax.Var) and x in self.blocked) or not bool(call.attrs.keepdims):
            return None
        axes = sorted(int(ax) % 4 for ax in call.attrs.axis) if call.attrs.axis is not None else None
        if axes != [2, 3]:
            return None
        bx, channels = self.blocked[x]
        return self.builder_.emit(relax.op.mean(bx, axis=[2, 3], keepdims=True)), channels

    def _rewrite(self, call: relax.Call):
        name = call.op.name
        if name == "relax.nn.conv2d":
            return self._conv(call)
        if name in _UNARY or name in _BINARY or (name == "relax.divide" and self._const(call.args[1]) is not None):
            return self._elementwise(call)
        if name in _POOL:
            return self._pool(call)
        if name == "relax.mean":
            return self._mean(call)
        return None

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = binding.value
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            folded = self._fold_const(value, _shape(binding.var))
            if folded is not None:
                self.consts[binding.var] = folded
            elif value.op.name == "relax.nn.conv1d" and self._conv1d(binding, value):
                return
            else:
                done = self._rewrite(value)
                if done is not None:
                    bvar, channels = done
                    nchw = self._leave(binding.var, bvar, channels)
                    self.set_var_remap(binding.var, nchw)
                    return
        super().visit_var_binding_(binding)


@tvm.transform.module_pass(opt_level=0, name="BlockedLayout")
class BlockedLayout:
    """``IRModule -> IRModule``: convolutional regions of ``main`` to NCHW[``block``]c.

    ``block``: channels per block (``Target.conv_block``). ``winograd``: stride-1 3x3 convs where
    ``schedules/cpu/winograd.use_winograd`` chooses it as Winograd F(m, 3). ``converted`` counts the
    convolutions rewritten by the last call, ``winograd_convs`` those of them in Winograd form.
    """

    def __init__(self, block: int = 16, winograd: bool = True):
        if block < 1:
            raise ValueError(f"BlockedLayout: block must be positive, got {block}")
        self.block = block
        self.winograd = winograd
        self.converted = 0
        self.winograd_convs = 0

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.CanonicalizeBindings()(mod)
        blocker = _Blocker(mod, self.block, self.winograd)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                blocker.var2val = relax.analysis.get_var2val(func)
                blocker.builder_.update_func(gv, blocker.visit_expr(func))
        self.converted = blocker.converted
        self.winograd_convs = blocker.winograd_convs
        out = blocker.builder_.get()
        return relax.transform.DeadCodeElimination()(out)

    def __repr__(self) -> str:
        return f"BlockedLayout(block={self.block}, winograd={self.winograd})"
