"""Find the rewrite sites of :class:`~hwcomp.passes.dense_to_bsr.DenseToBSR`: constant-weight fp32
matmuls (``matmul(x, permute_dims(W))`` from a torch Linear) and NCHW/OIHW conv2d (1x1 as a product over
pixels, others through im2col), each with the single-use epilogue it absorbs (bias add, shape-keeping
reshapes, then ReLU or GELU)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from tvm import relax
from tvm.ir import GenericConst

from hwcomp.relax_graph import const_array, op_name, static_shape


def _count_uses(func: relax.Function) -> dict:
    uses: dict = {}

    def visit(e):
        if isinstance(e, relax.Var):
            uses[e] = uses.get(e, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)  # visits uses only, not binding definitions
    return uses


@dataclasses.dataclass
class Site:
    """One matmul / 1x1 conv to rewrite: the binding that ends its fused chain and what to emit."""

    root: relax.Var
    kind: str  # "matmul" | "conv1x1" | "conv"
    x: relax.Expr
    x_shape: tuple[int, ...]
    weight: np.ndarray  # [N, K]
    bias: np.ndarray | None
    activation: str
    out_shape: tuple[int, ...]
    name: str
    conv: ConvGeometry | None = None


def _consumers(func: relax.Function) -> dict:
    """var -> list of (consumer var, its value) for every binding."""
    out: dict = {}
    for var, val in relax.analysis.get_var2val(func).items():
        if isinstance(val, relax.Call):
            for a in val.args:
                if isinstance(a, relax.Var):
                    out.setdefault(a, []).append((var, val))
    return out


def match_sites(func: relax.Function) -> list[Site]:
    var2val = relax.analysis.get_var2val(func)
    uses = _count_uses(func)
    consumers = _consumers(func)
    sites = []
    for var, val in var2val.items():
        op = op_name(val)
        site = None
        if op == "relax.matmul":
            site = _match_matmul(var, val, var2val)
        elif op == "relax.nn.conv2d":
            site = _match_conv(var, val)
        if site is not None:
            _absorb_epilogue(site, uses, consumers, var2val)
            sites.append(site)
    return sites


def _match_matmul(var, call, var2val) -> Site | None:
    x, wexpr = call.args
    wt = const_array(wexpr, var2val)
    x_shape, out_shape = static_shape(x), static_shape(var)
    if wt is None or wt.ndim != 2 or x_shape is None or out_shape is None or len(x_shape) < 1:
        return None
    if str(wt.dtype) != "float32" or str(x.ty.dtype) != "float32" or str(var.ty.dtype) != "float32":
        return None
    if x_shape[-1] != wt.shape[0]:
        return None
    return Site(var, "matmul", x, x_shape, np.ascontiguousarray(wt.T), None, "none", out_shape, var.name)


def _match_conv(var, call) -> Site | None:
    """conv2d (NCHW/OIHW, groups 1) with a constant weight: 1x1 stride 1 unpadded is a product over
    pixels; anything else goes through im2col (``conv``)."""
    w = call.args[1]
    a = call.attrs
    if not isinstance(w, GenericConst):
        return None
    x_shape, out_shape = static_shape(call.args[0]), static_shape(var)
    ws = tuple(int(d) for d in w.value.shape)
    ok = (
        x_shape is not None and out_shape is not None and len(ws) == 4 and len(x_shape) == 4
        and str(a.data_layout) == "NCHW" and str(a.kernel_layout) == "OIHW"
        and str(a.out_layout) == "NCHW" and int(a.groups) == 1
        and str(w.value.dtype) == "float32" and str(var.ty.dtype) == "float32"
    )
    if not ok:
        return None
    conv = ConvGeometry(ws[2], ws[3], tuple(int(v) for v in a.strides), tuple(int(v) for v in a.padding),
                         tuple(int(v) for v in a.dilation))
    kind = "conv1x1" if conv.is_pointwise() else "conv"
    weight = w.value.numpy().reshape(ws[0], -1)  # [O, C·kh·kw], C major: the im2col column order
    return Site(var, kind, call.args[0], x_shape, weight, None, "none", out_shape, var.name, conv)


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    kh: int
    kw: int
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]

    def is_pointwise(self) -> bool:
        return (self.kh, self.kw) == (1, 1) and self.strides == (1, 1) and not any(self.padding)

    def im2col(self, x_shape: tuple[int, ...], out_hw: tuple[int, int]) -> Callable:
        """A TE function ``x[N, C, H, W] -> cols[N·Ho·Wo, C·kh·kw]`` (zeros where padding is read)."""
        from tvm import te, tirx

        n, c, h, w = x_shape
        ho, wo = out_hw
        kh, kw = self.kh, self.kw
        (sh, sw), (dh, dw), (pt, pl) = self.strides, self.dilation, self.padding[:2]

        def fn(x):
            def col(p, q):
                b, rest = p // (ho * wo), p % (ho * wo)
                oy, ox = rest // wo, rest % wo
                ch, kk = q // (kh * kw), q % (kh * kw)
                iy = oy * sh - pt + (kk // kw) * dh
                ix = ox * sw - pl + (kk % kw) * dw
                inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
                return tirx.if_then_else(inside, x[b, ch, tirx.max(tirx.min(iy, h - 1), 0),
                                                   tirx.max(tirx.min(ix, w - 1), 0)], tirx.const(0.0, x.dtype))

            return te.compute((n * ho * wo, c * kh * kw), col, name="im2col")

        return fn


def rows(site: Site) -> int:
    """M of the product: all leading dims (matmul) or output pixels (conv)."""
    if site.kind == "matmul":
        return int(np.prod(site.x_shape[:-1]))
    nb, _, ho, wo = site.out_shape
    return nb * ho * wo


def _bias_ok(b: np.ndarray, n: int, kind: str) -> bool:
    """A float32 bias that runs along the output channel: last axis (matmul) or axis -3 (NCHW)."""
    axis = -1 if kind == "matmul" else -3
    if b.dtype != np.float32 or b.size != n or b.ndim < -axis:
        return False
    return b.shape[axis] == n


def _absorb_epilogue(site: Site, uses: dict, consumers: dict, var2val: dict) -> None:
    """Follow single-use consumers: bias add, shape-keeping reshapes (matmul), then ReLU or GELU."""
    n = site.weight.shape[0]
    cur = site.root
    while uses.get(cur, 0) == 1 and len(consumers.get(cur, [])) == 1:
        nxt, val = consumers[cur][0]
        op = op_name(val)
        if op == "relax.add" and site.bias is None and site.activation == "none":
            other = val.args[1] if val.args[0].same_as(cur) else val.args[0]
            b = const_array(other, var2val)
            if b is None or not _bias_ok(b, n, site.kind) or static_shape(nxt) != site.out_shape:
                return
            site.bias = b.reshape(n)
        elif op == "relax.reshape" and site.kind == "matmul":
            shape = static_shape(nxt)
            if shape is None or not shape or shape[-1] != n:
                return
            site.out_shape = shape
        elif op in ("relax.nn.relu", "relax.nn.gelu") and site.activation == "none":
            site.activation = op.rsplit(".", 1)[1]
        else:
            return
        site.root = nxt
        cur = nxt


__all__ = ["ConvGeometry", "Site", "match_sites", "rows"]
