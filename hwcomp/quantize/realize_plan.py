"""Realize's analysis of the graph around a quantized layer: which ops after it its kernel absorbs
(bias add, reshapes, one activation: :func:`plan_epilogue`), and whether every consumer of its output
is itself quantized (:func:`int8_consumers`), so the output can stay int8."""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm import relax

from .annotate import Layer
from .graph import Graph, is_observe, observe_key, op_name, static_shape

ACT_OPS = {"relax.nn.relu": "relu", "relax.nn.gelu": "gelu", "relax.nn.gelu_tanh": "gelu_tanh", "relax.nn.silu": "silu",
           "relax.clip": "relu6"}


def _act_of(value) -> str | None:
    """The fusable activation ``value`` computes (``clip`` only as ReLU6), or None."""
    act = ACT_OPS.get(op_name(value))
    if act == "relu6":
        lo, hi = (getattr(a, "value", None) for a in value.args[1:3])
        lo, hi = (getattr(v, "value", v) for v in (lo, hi))
        return "relu6" if (lo, hi) == (0, 6) else None
    return act


@dataclasses.dataclass(frozen=True)
class QParams:
    scale: float
    zp: int
    dtype: str  # int8 | uint8

    def to_dict(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zp, "dtype": self.dtype}


@dataclasses.dataclass
class Plan:
    """A dense/conv layer and the epilogue ops fused into it."""

    layer: Layer
    chain: list  # vars after the op that the kernel absorbs (bias add, reshapes, activation)
    end: relax.Var
    bias: np.ndarray | None
    act: str | None
    residual: relax.Var | None = None  # the other operand of a residual add fused after the bias


def plan_residual(g: Graph, plan: Plan) -> Plan | None:
    """``plan`` extended by a residual add after it — ``add(end, other)`` of the same 4-D shape,
    ``other`` computed earlier in the program — and one ReLU/ReLU6 after the add, or None."""
    if plan.act is not None or plan.layer.kind != "conv2d":
        return None
    u = g.single_user(plan.end)
    if u is None or op_name(g.value(u)) != "relax.add":
        return None
    a, b = g.value(u).args
    other = b if a.same_as(plan.end) else a
    shape = static_shape(plan.end)
    if (not isinstance(other, relax.Var) or other.same_as(plan.end) or static_shape(other) != shape
            or static_shape(u) != shape or len(shape) != 4 or g.order.get(other, -1) >= g.order[plan.layer.var]
            or str(other.ty.dtype) != "float32"):
        return None
    chain, end, act = plan.chain + [u], u, None
    nxt = g.single_user(u)
    if nxt is not None and _act_of(g.value(nxt)) in ("relu", "relu6"):
        act = _act_of(g.value(nxt))
        chain.append(nxt)
        end = nxt
    return dataclasses.replace(plan, chain=chain, end=end, act=act, residual=other)


def plan_epilogue(g: Graph, layer: Layer, used_keys=frozenset()) -> Plan:
    chain, cur, bias, act = [], layer.var, None, None
    out_shape = static_shape(layer.var)
    n_axis = -1 if layer.kind == "dense" else 1
    n = out_shape[n_axis]

    def skip_markers(v):
        # an observation point with one user inside the chain (QDQ models have them between the
        # op and its activation) is an identity: absorb it
        while True:
            u = g.single_user(v)
            if u is None or not is_observe(g.value(u)) or g.single_user(u) is None:
                return v
            if observe_key(g.value(u)) in used_keys:  # a quantized op reads it: keep it
                return v
            nxt_u = g.single_user(u)
            if op_name(g.value(nxt_u)) not in ("relax.add", "relax.reshape", *ACT_OPS):
                return v
            chain.append(u)
            v = u

    cur = skip_markers(cur)
    nxt = g.single_user(cur)
    if nxt is not None and op_name(g.value(nxt)) == "relax.add":
        val = g.value(nxt)
        other = val.args[1] if val.args[0].same_as(cur) else val.args[0]
        c = g.const_value(other)
        if c is not None and c.size == n and static_shape(nxt) == out_shape:
            ok = (c.ndim >= 1 and c.shape[-1] == n) if layer.kind == "dense" else (
                c.ndim >= 3 and c.shape[-3] == n and c.shape[-1] == 1 and c.shape[-2] == 1)
            if ok and c.dtype == np.float32:
                bias = c.reshape(n)
                chain.append(nxt)
                cur = skip_markers(nxt)
    # reshapes, then one activation
    probe, reshapes = cur, []
    while True:
        u = g.single_user(probe)
        if u is not None and op_name(g.value(u)) == "relax.reshape":
            reshapes.append(u)
            probe = u
            continue
        break
    u = g.single_user(probe)
    if u is not None and _act_of(g.value(u)) and (layer.kind == "dense" or not reshapes):
        act = _act_of(g.value(u))
        chain += reshapes + [u]
        cur = u
    elif not reshapes and (silu := _silu_of(g, probe)) is not None:
        act = "silu"
        chain += list(silu)
        cur = silu[1]
    return Plan(layer, chain, cur, bias, act)


def _silu_of(g: Graph, x):
    """``(s, y)`` where ``x``'s only users are ``s = sigmoid(x)`` and ``y = x * s`` (SiLU written out,
    as EfficientNet's exported graph has it), else None."""
    users = g.users.get(x, [])
    if len(users) != 2 or any(u is None for u in users):
        return None
    sig = next((u for u in users if op_name(g.value(u)) == "relax.sigmoid"), None)
    if sig is None:
        return None
    mul = next(u for u in users if u is not sig)
    val = g.value(mul)
    if op_name(val) != "relax.multiply" or g.users.get(sig, []) != [mul]:
        return None
    args = list(val.args)
    if not (args[0].same_as(x) and args[1].same_as(sig) or args[1].same_as(x) and args[0].same_as(sig)):
        return None
    return sig, mul

def int8_consumers(g: Graph, var, layer_by_var: dict, ignore=frozenset()) -> list | None:
    """Quantized consumers ``(layer, operand index)`` of ``var``, or None if a float one exists
    (users in ``ignore`` are neither)."""
    found = []
    for u in g.users.get(var, []):
        if u in ignore:
            continue
        if u is None:
            return None
        layer = layer_by_var.get(u)
        if layer is not None:
            idx = [i for i, o in enumerate(layer.operands) if o.same_as(var)]
            if not idx:
                return None
            found += [(layer, i) for i in idx]
            continue
        st = g.layout_step(u)
        if st is None or not st[0].same_as(var):
            return None
        sub = int8_consumers(g, u, layer_by_var, ignore)
        if sub is None:
            return None
        found += sub
    return found
