"""How ``Realizer`` emits a quantized convolution: blocked NCHW[x]c int8 or the plain NCHW kernel.

Where the target's provider has a dot step for convolutions (``KernelProvider.conv_dot``: AVX2,
AVX-512 VNNI, AArch64), a conv runs ``int8_conv``'s blocked kernel: its input arrives blocked —
straight from the previous int8 conv when that one requantizes into it, otherwise quantized and
blocked in one pass from the float value — and its output is either requantized int8, still
blocked, for the next convs (only when every consumer is such a conv reading it directly), or
float32 NCHW for float consumers (residual adds, pooling, heads). Everything else gets the plain
NCHW x OIHW kernel (``int8_compute.conv2d_func``) under the default schedule rules.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from . import int8_conv as ic
from .graph import op_name, static_shape
from .int8_compute import conv2d_func


def blocked_dot(provider, layer, wq: np.ndarray | None = None, act_zero_point: int = 0):
    """The provider's dot step for this conv layer (see ``KernelProvider.conv_dot``), or None
    where the layer takes the NCHW kernel (no dot, not 4-D static)."""
    if layer.kind != "conv2d" or provider.target is None:
        return None
    shape = static_shape(layer.operands[0])
    if shape is None or len(shape) != 4 or layer.weight is None or layer.weight.ndim != 4:
        return None
    w_absmax = 127 if wq is None else int(np.abs(wq.astype(np.int16)).max(initial=0))
    return provider.conv_dot(w_absmax, act_zero_point)


def direct_conv_consumers(g, var, blocked_ids: set, layer_by_var: dict, ignore=frozenset()) -> bool:
    """Whether every user of ``var`` (but those in ``ignore``) is a blocked int8 conv reading it as
    its input, unchanged or through NCHW max-pools (they run on the blocked int8 codes)."""
    users = [u for u in g.users.get(var, []) if u not in ignore]
    if not users:
        return False
    for u in users:
        if is_blocked_pool(g, u):
            if not direct_conv_consumers(g, u, blocked_ids, layer_by_var, ignore):
                return False
            continue
        layer = layer_by_var.get(u)
        if layer is None or layer.id not in blocked_ids or not layer.operands[0].same_as(var):
            return False
    return True


def is_blocked_pool(g, var) -> bool:
    """Whether ``var`` is an NCHW ``max_pool2d`` (which ``max_pool_blocked`` runs blocked)."""
    val = g.value(var) if var is not None else None
    return op_name(val) == "relax.nn.max_pool2d" and str(val.attrs.layout) == "NCHW" and \
        str(val.attrs.out_layout) in ("NCHW", "") and len(static_shape(val.args[0]) or ()) == 4


def unpooled(g, var):
    """``var`` with the NCHW max-pools it is computed by walked back."""
    while is_blocked_pool(g, var):
        var = g.value(var).args[0]
    return var


def _padded_epilogue_params(eparams: list, epi, n_pad: int) -> list:
    if epi.kind == "requant":
        mult, shift = eparams
        return [ic.pad_channels(np.asarray(mult, np.int32), n_pad), ic.pad_channels(np.asarray(shift, np.int32),
                                                                                      n_pad, 1)]
    out = [ic.pad_channels(np.asarray(eparams[0], np.float32), n_pad)]
    if epi.kind == "float_requant":
        out.append(ic.pad_channels(np.asarray(eparams[1], np.float32), n_pad, 1.0))
    return out


def _geometry(at, xq, wq) -> tuple:
    """``(strides, padding, dilation, (OH, OW))`` of a conv with attrs ``at`` on the blocked ``xq``."""
    _, _, h, w, _ = static_shape(xq)
    _, _, kh, kw = wq.shape
    strides = [int(v) for v in at.strides]
    padding = [int(v) for v in at.padding]
    dilation = [int(v) for v in at.dilation]
    oh = ic.out_size(h, kh, strides[0], dilation[0], padding[0], padding[2])
    ow = ic.out_size(w, kw, strides[1], dilation[1], padding[1], padding[3])
    return strides, padding, dilation, (oh, ow)


def _emit(bb, add_func, layer, f, inputs: list, bias, epi, eparams, n_pad: int, out_nchw: tuple, out_blocked: tuple,
          nchw_out: bool, residual):
    """The conv's last kernel ``f`` on ``inputs`` (the activation and packed weights, or the Winograd
    products), then the padded bias, the epilogue's parameters and the residual operand."""
    gv = add_func(bb, f, f"q_{layer.id}")
    args = [*inputs, relax.const(ic.pad_channels(bias, n_pad))]
    args += [relax.const(a) for a in _padded_epilogue_params(eparams, epi, n_pad)]
    if residual is not None:
        args.append(residual[1])
    oshape = out_nchw if nchw_out else out_blocked
    return bb.emit(relax.call_tir(gv, args, relax.TensorType(oshape, epi.out_dtype)), name_hint=f"{layer.id}_out")


def emit_blocked_conv(bb, add_func, provider, layer, at, xq, px, wq, bias, epi, eparams, dot, nchw_out: bool,
                      residual=None):
    """Emit the blocked int8 conv; returns its output: float32 NCHW (``nchw_out``), or blocked
    ``[N, O/x, OH, OW, x]`` (int8, or float32 for a residual add fused into a later conv).
    ``residual``: ``(int8_conv.Residual, blocked value)`` added before the activation."""
    n, cb, h, w, xi = static_shape(xq)
    o, _, kh, kw = wq.shape
    strides, padding, dilation, (oh, ow) = _geometry(at, xq, wq)
    ob = -(-o // ic.BLOCK)
    rows, width = oh, ow
    if (kh, kw) == (1, 1) and strides == [1, 1] and not any(padding):
        rows, width = ic.row_view(oh, ow, lambda v: provider.conv_reg_n(v, xi, dot), ob, provider.cores)
    viewed = (rows, width) != (oh, ow)
    if viewed:  # the pixels as one row: reshapes of contiguous values, no copies
        xq = bb.emit(relax.op.reshape(xq, (n, cb, rows, width, xi)))
        if residual is not None:
            residual = (residual[0], bb.emit(relax.op.reshape(residual[1], (n, ob, rows, width, ic.BLOCK))))
        h, w = rows, width
    reg_n = provider.conv_reg_n(width, xi, dot, kw, dilation[1])
    taps = provider.conv_weight_taps(width, kw, dilation[1], xi, dot)
    f = ic.conv2d_nchwc_int8_func((n, cb, h, w, xi), o, (kh, kw), strides, padding, dilation, px.dtype, epi,
                                  px.zp, dot.kb, reg_n, nchw_out, dot.halves, residual and residual[0], taps)
    out = _emit(bb, add_func, layer, provider.schedule_blocked_conv(f, dot),
                [xq, relax.const(ic.pack_conv_weight(wq, xi, ic.BLOCK, dot.kb, dot.halves, taps))], bias, epi, eparams,
                ob * ic.BLOCK, (n, o, rows, width), (n, ob, rows, width, ic.BLOCK), nchw_out, residual)
    if viewed:
        out = bb.emit(relax.op.reshape(out, (n, o, oh, ow) if nchw_out else (n, ob, oh, ow, ic.BLOCK)))
    return out


def emit_folded_conv(bb, add_func, provider, layer, at, x, x_shape, px, bits: int, wq, bias, epi, eparams, dot,
                     xi: int, nchw_out: bool, residual=None):
    """Emit a narrow conv with its kernel rows folded into the channels (``xi`` bytes per pixel
    and ``dot``: ``provider.conv_fold``'s): the float NCHW input ``x`` quantized into HWC (the
    blocked layout with one block of all its channels), then ``int8_conv.conv2d_folded_int8_func``;
    outputs and ``residual`` as :func:`emit_blocked_conv`'s."""
    from hwcomp.schedules.cpu.int8_conv import schedule_quantize_hwc

    assert dot.halves == 1, dot
    n, c, h, w = x_shape
    o, _, kh, kw = wq.shape
    vector_bits = getattr(provider.target, "vector_bits", 128)
    gq = add_func(bb, schedule_quantize_hwc(ic.quantize_blocked_func(x_shape, px.scale, px.zp, px.dtype, bits, c),
                                            vector_bits), "q_quantize_hwc")
    xq = bb.emit(relax.call_tir(gq, [x], relax.TensorType((n, 1, h, w, c), px.dtype)))
    strides, padding, dilation, (oh, ow) = _geometry(at, xq, wq)  # xq: blocked, one block of all channels
    xq = bb.emit(relax.op.reshape(xq, (n, h, w * c)))
    ob = -(-o // ic.BLOCK)
    f = ic.conv2d_folded_int8_func((n, h, w, c), o, (kh, kw), strides, padding, dilation[0], xi, px.dtype, epi, px.zp,
                                   dot.kb, provider.conv_reg_n(ow, xi, dot), nchw_out, residual and residual[0])
    w8 = ic.pack_conv_weight(ic.fold_conv_weight(wq), xi, ic.BLOCK, dot.kb)
    return _emit(bb, add_func, layer, provider.schedule_blocked_conv(f, dot), [xq, relax.const(w8)], bias, epi, eparams,
                 ob * ic.BLOCK, (n, o, oh, ow), (n, ob, oh, ow, ic.BLOCK), nchw_out, residual)


def winograd_tile(provider, layer, at, enabled: bool = True) -> int:
    """The int8 Winograd tile for this conv (``int8_winograd.use_int_winograd``), 0 for the direct
    kernel: a stride-1 undilated ungrouped 3x3 conv on a static 4-D input, where the provider
    has an int16 pair dot."""
    from .int8_winograd import use_int_winograd

    dot = provider.winograd_dot() if enabled and provider.target is not None else None
    shape = static_shape(layer.operands[0])
    if dot is None or layer.kind != "conv2d" or shape is None or len(shape) != 4 or layer.weight is None \
            or layer.weight.ndim != 4 or tuple(layer.weight.shape[2:]) != (3, 3) or int(at.groups) != 1 \
            or any(int(v) != 1 for v in (*at.strides, *at.dilation)):
        return 0
    pt, pl, pb, pr = (int(v) for v in at.padding)
    oh, ow = ic.out_size(shape[2], 3, 1, 1, pt, pb), ic.out_size(shape[3], 3, 1, 1, pl, pr)
    return use_int_winograd(shape[1], layer.weight.shape[0], oh, ow, dot.lanes)


def emit_winograd_conv(bb, add_func, provider, layer, at, xq, px, wq, bias, epi, eparams, m: int, bits: int,
                       nchw_out: bool, residual=None):
    """Emit the int8 Winograd conv (``int8_winograd.py``): input transform, products, output
    transform with the epilogue; ``bias`` without the zero-point term (the transform subtracts
    it); outputs and ``residual`` as :func:`emit_blocked_conv`'s."""
    from hwcomp.schedules.cpu.int8_winograd import schedule_int_winograd_output
    from hwcomp.schedules.cpu.winograd import winograd_input_func, winograd_input_shape

    from . import int8_winograd as iw
    from .qmath import qrange

    n, cb, h, w, x = static_shape(xq)
    o = wq.shape[0]
    _, padding, _, (oh, ow) = _geometry(at, xq, wq)
    lo, hi = qrange(px.dtype, bits)
    u, rho = iw.transform_weight(wq, m, iw.v_bounds(m, lo - px.zp, hi - px.zp))
    vshape = winograd_input_shape((n, cb, h, w, x), m, padding)
    gv = add_func(bb, winograd_input_func((n, cb, h, w, x), m, padding, px.dtype, "int16", px.zp), f"q_{layer.id}_wino_in")
    v = bb.emit(relax.call_tir(gv, [xq], relax.TensorType(vshape, "int16")), name_hint=f"{layer.id}_wino_v")
    dot = provider.winograd_dot()
    positions, n_tiles, ob = (m + 2) ** 2, vshape[3], -(-o // ic.BLOCK)
    prod_shape = (positions, ob, 1, n_tiles, ic.BLOCK)
    f = iw.product_func(positions, cb, n_tiles, ob, provider.conv_reg_n(n_tiles, x, dot))
    gv = add_func(bb, provider.schedule_blocked_conv(f, dot), f"q_{layer.id}_wino_prod")
    n_pad = ob * ic.BLOCK
    rho_p = np.zeros((positions, n_pad), np.float32)
    rho_p[:, :o] = rho
    prod = bb.emit(relax.call_tir(gv, [v, relax.const(iw.pack_weight(u)), relax.const(rho_p.reshape(-1))],
                                  relax.TensorType(prod_shape, "float32")), name_hint=f"{layer.id}_wino_m")
    f = iw.output_func(prod_shape, m, n, oh, ow, o, epi, nchw_out, residual and residual[0])
    return _emit(bb, add_func, layer, schedule_int_winograd_output(f, m), [prod], bias, epi, eparams, n_pad,
                 (n, o, oh, ow), (n, ob, oh, ow, ic.BLOCK), nchw_out, residual)


def is_depthwise(layer, at) -> bool:
    return layer.kind == "conv2d" and int(at.groups) > 1


def emit_blocked_depthwise(bb, add_func, provider, layer, at, xq, px, wq, bias, epi, eparams, nchw_out: bool,
                           residual=None):
    """Emit the blocked int8 depthwise conv (input blocked with :data:`int8_conv.BLOCK` lanes;
    outputs and ``residual`` as :func:`emit_blocked_conv`'s)."""
    from hwcomp.schedules.cpu.int8_conv import int8_reg_n

    n, cb, h, w, x = static_shape(xq)
    c, _, kh, kw = wq.shape
    strides, padding, dilation, (oh, ow) = _geometry(at, xq, wq)
    lanes = max(getattr(provider.target, "vector_bits", 128) // 32, 1)
    reg_n = int8_reg_n(ow, -(-x // lanes), getattr(provider.target, "vector_registers", 16))
    f = ic.depthwise_nchwc_int8_func((n, cb, h, w, x), c, (kh, kw), strides, padding, dilation, px.dtype, epi, px.zp,
                                     reg_n, nchw_out, residual and residual[0])
    return _emit(bb, add_func, layer, provider.schedule_blocked_conv(f, None, depthwise=True),
                 [xq, relax.const(ic.pack_depthwise_weight(wq, x))], bias, epi, eparams, cb * x, (n, c, oh, ow), (n, cb, oh, ow, x),
                 nchw_out, residual)


def emit_nchw_conv(bb, add_func, layer, at, x_shape, xq, px, wq, bias, epi, eparams):
    f = conv2d_func(x_shape, wq.shape, [int(v) for v in at.strides], [int(v) for v in at.padding],
                    [int(v) for v in at.dilation], px.dtype, epi, pad_value=px.zp)
    gv = add_func(bb, f, f"q_{layer.id}")
    args = [xq, relax.const(wq), relax.const(bias)] + [relax.const(a) for a in eparams]
    oshape = static_shape(layer.var)
    return bb.emit(relax.call_tir(gv, args, relax.TensorType(oshape, epi.out_dtype)), name_hint=f"{layer.id}_out")


def quantize_blocked(bb, add_func, x, shape, p, bits: int, block: int):
    """Quantize the float NCHW ``x`` straight into the blocked layout."""
    gv = add_func(bb, ic.quantize_blocked_func(shape, p.scale, p.zp, p.dtype, bits, block), "q_quantize_blocked")
    n, c, h, w = shape
    out = (n, -(-c // block), h, w, block)
    return bb.emit(relax.call_tir(gv, [x], relax.TensorType(out, p.dtype)))


def block_int(bb, add_func, xq, p, block: int):
    """An int8 NCHW value (after layout steps) into the blocked layout."""
    shape = static_shape(xq)
    gv = add_func(bb, ic.block_int_func(shape, p.dtype, block, p.zp), "q_to_blocked")
    n, c, h, w = shape
    return bb.emit(relax.call_tir(gv, [xq], relax.TensorType((n, -(-c // block), h, w, block), p.dtype)))


def block_float(bb, add_func, x):
    """A float32 NCHW value into the blocked layout (a residual read by a blocked conv's epilogue)."""
    shape = static_shape(x)
    gv = add_func(bb, ic.block_int_func(shape, "float32", ic.BLOCK, 0), "q_to_blocked_f32")
    n, c, h, w = shape
    return bb.emit(relax.call_tir(gv, [x], relax.TensorType((n, -(-c // ic.BLOCK), h, w, ic.BLOCK), "float32")))


def max_pool_blocked(bb, xq, attrs):
    """``max_pool2d`` with ``attrs`` (an NCHW pool's) on a blocked int8 value."""
    block = static_shape(xq)[-1]
    return bb.emit(relax.op.nn.max_pool2d(
        xq, pool_size=attrs.pool_size, strides=attrs.strides, padding=attrs.padding, dilation=attrs.dilation,
        ceil_mode=bool(attrs.ceil_mode), layout=f"NCHW{block}c"))


def dequantize_blocked(bb, add_func, q, shape, epi):
    gv = add_func(bb, ic.dequantize_blocked_func(shape, epi.out_scale, epi.out_zp, epi.out_dtype, ic.BLOCK),
                  "q_dequantize_blocked")
    return bb.emit(relax.call_tir(gv, [q], relax.TensorType(shape, "float32")))



__all__ = [
    "block_float",
    "block_int",
    "blocked_dot",
    "dequantize_blocked",
    "direct_conv_consumers",
    "emit_blocked_conv",
    "emit_blocked_depthwise",
    "emit_folded_conv",
    "emit_nchw_conv",
    "emit_winograd_conv",
    "is_blocked_pool",
    "is_depthwise",
    "max_pool_blocked",
    "quantize_blocked",
    "unpooled",
    "winograd_tile",
]
