"""Small helpers over a Relax ``main``: bindings, users, constants, layout chains, rebuilding."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.ir import GenericConst

# The quantizer's modules import these from here.
from ..relax_graph import const_array, op_name, static_shape, vars_in

OBSERVE = "hwcomp.quantize.observe"

# Ops that move or reinterpret elements without changing values: a quantized tensor can go
# through them as int8 (quantization commutes with them).
LAYOUT_OPS = ("relax.reshape", "relax.permute_dims", "relax.expand_dims", "relax.squeeze", "relax.broadcast_to",
              "relax.flatten")
# Monotonic ops that commute with quantization (max of codes = code of the max).
MONOTONIC_OPS = ("relax.nn.max_pool2d",)
#: What ``rebuild``'s ``on_binding`` returns to drop a binding.
SKIP = object()


def dtype_of(expr) -> str | None:
    ty = expr.ty
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


def is_observe(expr) -> bool:
    return (op_name(expr) == "relax.call_pure_packed" and isinstance(expr.args[0], relax.ExternFunc)
            and str(expr.args[0].global_symbol) == OBSERVE)


def observe_key(expr) -> str:
    return str(expr.args[2].value)


def observe_call(x: relax.Expr, key: str) -> relax.Call:
    return relax.call_pure_packed(OBSERVE, x, tvm.ir.StringImm(key), ty_args=x.ty)


def positive_scalar(expr) -> float | None:
    a = const_array(expr)
    if a is None or a.size != 1 or a.dtype.kind != "f":
        return None
    v = float(a.reshape(()))
    return v if v > 0 and np.isfinite(v) else None


class Graph:
    """Bindings of a function in order, with definitions and users of every bound var."""

    def __init__(self, func: relax.Function):
        self.func = func
        self.bindings = [b for blk in func.body.blocks for b in blk.bindings]
        self.defs: dict = {b.var: b.value for b in self.bindings}
        self.users: dict = {}
        self.order = {b.var: i for i, b in enumerate(self.bindings)}
        for b in self.bindings:
            for v in vars_in(b.value):
                self.users.setdefault(v, []).append(b.var)
        for v in vars_in(func.body.body):
            self.users.setdefault(v, []).append(None)  # None = function output

    def value(self, var):
        return self.defs.get(var)

    def single_user(self, var):
        us = self.users.get(var, [])
        return us[0] if len(us) == 1 else None

    def layout_step(self, expr):
        """If ``expr`` is a var bound to a value-preserving op, ``(input, op call, scale factor)``."""
        if not isinstance(expr, relax.Var):
            return None
        val = self.defs.get(expr)
        if val is None:
            return None
        if is_observe(val):
            return val.args[1], val, 1.0
        if isinstance(val, relax.TupleGetItem) and isinstance(val.tuple_value, relax.Var):
            tup = self.defs.get(val.tuple_value)
            if isinstance(tup, relax.Tuple) and isinstance(tup.fields[val.index], relax.Var):
                return tup.fields[val.index], val, 1.0
            return None
        name = op_name(val)
        if name in MONOTONIC_OPS and static_shape(val.args[0]) is not None:
            return val.args[0], val, 1.0
        if name in LAYOUT_OPS:
            if name == "relax.broadcast_to" and static_shape(val.args[0]) != static_shape(val):
                return None
            return val.args[0], val, 1.0
        if name == "relax.multiply":
            for a, b in ((0, 1), (1, 0)):
                c = positive_scalar(val.args[b])
                if c is not None and static_shape(val.args[a]) == static_shape(val):
                    return val.args[a], val, c
        return None

    def root(self, expr):
        """Walk back through layout ops and observers: ``(root expr, steps from root, scale)``
        where the operand equals ``steps(root) * scale``."""
        root, steps, scale, _key = self.trace(expr)
        return root, steps, scale

    def trace(self, expr):
        """Like :meth:`root`, also giving the key of the first observation point met (or None)."""
        steps, scale, key = [], 1.0, None
        while True:
            st = self.layout_step(expr)
            if st is None:
                return expr, steps[::-1], scale, key
            nxt, call, c = st
            if is_observe(call):
                key = key or observe_key(call)
            else:
                steps.append(call)
            scale *= c
            expr = nxt

    def const_value(self, expr) -> np.ndarray | None:
        """A constant, or a constant through reshape/permute_dims/expand_dims/squeeze, in NumPy."""
        c = const_array(expr)
        if c is not None:
            return c
        val = self.defs.get(expr) if isinstance(expr, relax.Var) else None
        if isinstance(val, GenericConst):
            return const_array(val)
        name = op_name(val)
        if name not in ("relax.reshape", "relax.permute_dims", "relax.expand_dims", "relax.squeeze"):
            return None
        inner = self.const_value(val.args[0])
        shape = static_shape(val)
        if inner is None or shape is None:
            return None
        if name == "relax.permute_dims":
            axes = val.attrs.axes
            return np.transpose(inner, None if axes is None else [int(a) for a in axes])
        return inner.reshape(shape)


#: Ops that only re-shape their input (the data and its order unchanged).
RESHAPES = ("relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten")


def torch_max_pool(at) -> dict | None:
    """``torch.nn.functional.max_pool2d`` arguments of a Relax ``max_pool2d`` with attrs ``at``, or
    None where PyTorch has no equivalent (not NCHW, asymmetric padding, ceil mode)."""
    pt, pl, pb, pr = (int(v) for v in at.padding)
    if str(at.layout) != "NCHW" or (pt, pl) != (pb, pr) or bool(at.ceil_mode):
        return None
    return {"kernel_size": [int(v) for v in at.pool_size], "stride": [int(v) for v in at.strides],
            "padding": [pt, pl], "dilation": [int(v) for v in at.dilation]}


def apply_steps(x: np.ndarray, steps, max_pool: bool = False) -> np.ndarray | None:
    """The operand from its root tensor ``x`` through the ``steps`` :meth:`Graph.trace` found (a
    positive scalar multiply is left to the caller's factor); None for a step it cannot apply.
    ``max_pool``: also apply an NCHW max-pool with symmetric padding (PyTorch's), which GPTQ's
    input moments need and the per-layer fidelity probe does not take."""
    for st in steps:
        name = op_name(st)
        if name is None:  # TupleGetItem of a tuple literal: identity
            continue
        if name == "relax.permute_dims":
            axes = st.attrs.axes
            x = np.transpose(x, None if axes is None else [int(a) for a in axes])
        elif name in RESHAPES or name == "relax.broadcast_to":
            x = x.reshape(static_shape(st))
        elif name == "relax.multiply":
            continue  # folded into the scale factor
        elif name == "relax.nn.max_pool2d" and max_pool and (kw := torch_max_pool(st.attrs)) is not None:
            import torch

            x = torch.nn.functional.max_pool2d(torch.from_numpy(np.ascontiguousarray(x)), **kw).numpy()
        else:
            return None
    return x


def substitute(expr, vmap: dict):
    """``expr`` with vars replaced by ``vmap`` (Call, Tuple, TupleGetItem; others unchanged)."""
    if isinstance(expr, relax.Var):
        return vmap.get(expr, expr)
    if isinstance(expr, relax.Call):
        args = [substitute(a, vmap) for a in expr.args]
        if all(a.same_as(b) for a, b in zip(args, expr.args)):
            return expr
        return relax.Call(expr.op, args, expr.attrs, expr.ty_args, expr.span)
    if isinstance(expr, relax.Tuple):
        fields = [substitute(f, vmap) for f in expr.fields]
        return relax.Tuple(fields)
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(substitute(expr.tuple_value, vmap), expr.index)
    return expr


def rebuild(mod: tvm.IRModule, on_binding: Callable, on_start: Callable | None = None,
            after_binding: Callable | None = None, name: str = "main") -> tvm.IRModule:
    """Re-emit ``mod[name]`` binding by binding through a BlockBuilder.

    ``on_binding(bb, binding, value, vmap)`` gets each binding with its value already substituted;
    it returns an expression to bind to the binding's var (``None``: the value unchanged;
    :data:`SKIP`: drop the binding, whose var later bindings then must not use). It may
    emit other bindings first and add PrimFuncs with ``bb.add_func``. ``on_start(bb, vmap)`` runs
    inside the first block before any binding. ``after_binding(bb, binding, new_var)`` may emit
    more and return a var that later bindings see instead of ``new_var`` (the function's result
    keeps ``new_var``). Other functions of ``mod`` are kept.
    """
    func = mod[name]
    bb = relax.BlockBuilder()
    vmap: dict = {}
    outvars: dict = {}
    attrs = dict(func.attrs) if func.attrs else None
    with bb.function(name, list(func.params), attrs=attrs, pure=func.is_pure):
        started = False
        for blk in func.body.blocks:
            dataflow = isinstance(blk, relax.DataflowBlock)
            with bb.dataflow() if dataflow else contextlib.nullcontext():
                if not started and on_start is not None:
                    on_start(bb, vmap)
                started = True
                for b in blk.bindings:
                    value = substitute(b.value, vmap)
                    if isinstance(b, relax.MatchCast):
                        new = bb.match_cast(value, b.ty)
                        vmap[b.var] = outvars[b.var] = new
                        continue
                    out = on_binding(bb, b, value, vmap)
                    if out is SKIP:
                        continue
                    out = value if out is None else out
                    if dataflow and not isinstance(b.var, relax.DataflowVar):
                        new = bb.emit_output(out, name_hint=b.var.name)
                    else:
                        new = bb.emit(out, name_hint=b.var.name)
                    vmap[b.var] = new
                    outvars[b.var] = new
                    if after_binding is not None:
                        repl = after_binding(bb, b, new)
                        if repl is not None:
                            vmap[b.var] = repl
        if not started and on_start is not None:
            with bb.dataflow():
                on_start(bb, vmap)
        result = substitute(func.body.body, {**vmap, **outvars})
        bb.emit_func_output(result)
    out = bb.get()
    for gv, f in mod.functions_items():
        if gv.name_hint != name:
            out[gv] = f
    return tvm.IRModule(dict(out.functions_items()), attrs=mod.attrs)
