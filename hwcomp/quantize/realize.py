"""Realize: rewrite the annotated fp32 module into integer kernels.

For every quantized layer (see ``annotate``) with calibrated activation ranges:

* weights: symmetric int8, one scale per output channel (``QuantConfig.per_channel``), packed in
  the target provider's layout (``[N/8, K/2, 8, 2]`` AVX2, ``[N/16, K/4, 16, 4]`` VNNI,
  ``[N/4, K/4, 4, 4]`` sdot/NEON, ``[N, K]`` generic/CUDA);
* activations: per-tensor; int8 with zero point 0 (symmetric), uint8 with zero point 0 when the
  calibrated range is non-negative and the kernel takes uint8, int8 with a zero point (affine;
  folded into the bias), or uint8 = int8 codes + 128 for kernels that only take uint8 (VNNI);
* ``int8 x int8 -> int32`` accumulation, int32 bias ``round(b / (s_x s_w)) - zp_x sum_k Wq``;
* the epilogue (bias add, ReLU, GELU, found after the op through reshapes) runs inside the kernel:
  - the result goes on as **int8** when every consumer of the layer's output (through reshape,
    permute_dims, expand/squeeze, same-shape broadcast, max-pool, multiply by a positive scalar)
    is itself a quantized op wanting the same parameters: ``requant`` (integer fixed-point
    multiplier, no float; ReLU is a clamp) or ``float_requant`` (GELU between the two);
  - otherwise it is dequantized in the kernel (``float32 = (acc + bias) * s_x s_w[n]``, then the
    activation) for the float consumers.

Activations entering a quantized op from a float producer are quantized once per tensor
(``clip(round_half_even(x / s) + zp)``) and shared by every consumer. The module that comes out
has no observation points left; dead float code is removed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax

from hwcomp.relax_graph import add_prim_func

from . import qmath
from . import realize_conv as rc
from .annotate import Layer, find_layers, fingerprint
from .config import QuantConfig
from .gptq import WeightRounding
from .graph import SKIP, Graph, is_observe, observe_key, op_name, rebuild, static_shape
from .int8_compute import (
    Epilogue,
    KernelProvider,
    batch_matmul_func,
    dense_func,
    dequantize_func,
    pack_weight,
    quantize_func,
)
from .int8_conv import BLOCK, Residual, in_block
from .realize_plan import Plan, QParams, int8_consumers, plan_epilogue, plan_residual


class Realizer:
    """``IRModule -> IRModule`` (the annotated module → integer kernels), see the module docstring.

    ``ranges``: activation range ``(lo, hi)`` per observation key (from calibration);
    ``fixed``: :class:`QParams` per key given by the model itself (ONNX QDQ); ``given_weights``:
    weight fingerprint → ``(Wq, scales)`` given by the model; ``force_float``: layer ids or names
    left in fp32 (the fidelity fallback). ``smooth``: per-channel smoothing factors ``s[K]`` by
    key (``smooth.py``): the activation is quantized as ``x / s`` and the weights of its dense
    consumers become ``W * s``; ``ranges`` of those keys are the smoothed ones.
    """

    def __init__(self, config: QuantConfig, provider: KernelProvider | None = None, ranges: dict | None = None,
                 fixed: dict | None = None, given_weights: dict | None = None, names: dict | None = None,
                 force_float=(), smooth: dict | None = None, rounding: WeightRounding | None = None):
        self.config = config
        self.rounding = rounding  # GPTQ codes from calibration's input moments (gptq.py), or nearest
        self.provider = provider or KernelProvider()
        self.ranges = ranges or {}
        self.fixed = fixed or {}
        self.given_weights = given_weights or {}
        self.names = names or {}
        self.force_float = set(force_float)
        self.smooth = smooth or {}
        self.chain_smoothed = True
        self.report: list[dict] = []
        self.layer_params: dict[str, dict] = {}
        self.weight_bits: dict[str, int] = {}  # layers realized with narrower weights (reduce_range)
        self.gptq_layers: set[str] = set()  # layers whose codes came from GPTQ (the report says so)

    # ---- activation parameters ---------------------------------------------------------------
    def act_params(self, key: str, kind: str) -> QParams | None:
        bits = self.config.bits
        half = 1 << (bits - 1)
        dts = ("int8", "uint8") if kind == "batch_matmul" else self.provider.act_dtypes
        if key in self.fixed:
            p = self.fixed[key]
            if kind == "batch_matmul":
                if p.dtype == "int8" and p.zp == 0 or p.dtype == "uint8" and p.zp == 0:
                    return p
                if p.dtype == "uint8" and p.zp == half:
                    return QParams(p.scale, 0, "int8")
                return None
            if p.dtype in dts:
                return p
            return QParams(p.scale, p.zp + half, "uint8") if p.dtype == "int8" else QParams(p.scale, p.zp - half, "int8")
        if key not in self.ranges:
            return None
        lo, hi = (float(v) for v in self.ranges[key])
        amax = max(abs(lo), abs(hi), 1e-8)
        if lo >= 0 and self.config.unsigned_nonneg and "uint8" in dts:
            return QParams(max(hi, 1e-8) / ((1 << bits) - 1), 0, "uint8")
        if kind == "batch_matmul" or self.config.activations == "symmetric":
            s = amax / (half - 1)
            return QParams(s, 0, "int8") if "int8" in dts else QParams(s, half, "uint8")
        s, zp, _ = qmath.activation_params(lo, hi, "affine", bits)
        return QParams(s, zp, "int8") if "int8" in dts else QParams(s, zp + half, "uint8")

    # ---- rewrite -----------------------------------------------------------------------------
    def __call__(self, mod: tvm.IRModule) -> tvm.IRModule:
        cfg = self.config
        func = mod["main"]
        g = Graph(func)
        layers = find_layers(func, cfg, self.names)
        self.report = []
        quantized: list[Layer] = []
        for layer in layers:
            if not layer.skipped and (layer.id in self.force_float or any(n in self.force_float for n in layer.names)):
                layer.skipped, layer.reason = True, "fidelity fallback"
            if not layer.skipped:
                layer.keys = [g.trace(o)[3] for o in layer.operands]
                if any(k is None for k in layer.keys):
                    layer.skipped, layer.reason = True, "not observed"
                else:
                    params = [self.act_params(k, layer.kind) for k in layer.keys]
                    if any(p is None for p in params):
                        layer.skipped, layer.reason = True, "activation parameters unusable for this kernel"
                    elif rc.is_depthwise(layer, g.value(layer.var).attrs) and rc.blocked_dot(self.provider,
                                                                                               layer) is None:
                        layer.skipped, layer.reason = True, "depthwise: no int8 kernel for this target"
            if not layer.skipped:
                quantized.append(layer)
        layer_by_var = {layer.var: layer for layer in quantized}
        plans = {}
        used_keys = {k for layer in quantized for k in layer.keys}
        for layer in quantized:
            if layer.kind in ("dense", "conv2d"):
                plans[layer.id] = plan_epilogue(g, layer, used_keys)
            else:
                plans[layer.id] = Plan(layer, [], layer.var, None, None)
        sparse = self._sparse_layers(quantized, plans)
        blocked = {layer.id for layer in quantized if rc.blocked_dot(self.provider, layer) is not None}
        # residual adds fused into the blocked conv computed last of the two operands
        fused_adds: dict = {}  # add var -> the operand it reads from outside the fusing conv
        float_blocked: set = set()  # blocked convs whose float output feeds such an add: kept blocked
        if cfg.fuse_residual:
            by_end = {p.end: p for p in plans.values()}
            for layer in quantized:
                ext = plan_residual(g, plans[layer.id]) if layer.id in blocked else None
                if ext is None:
                    continue
                plans[layer.id] = ext
                add = ext.chain[-2] if ext.act else ext.chain[-1]
                fused_adds[add] = ext.residual
                src = by_end.get(ext.residual)
                if src is not None and src.layer.id in blocked and g.single_user(ext.residual) is not None:
                    float_blocked.add(src.layer.id)
        # which outputs stay int8 (not those of int8 BSR layers: that kernel dequantizes)
        out_q: dict[str, tuple[str, QParams]] = {}
        for layer in quantized:
            plan = plans[layer.id]
            if layer.id in sparse:
                continue
            if plan.act not in (None, "relu", "relu6", "silu", "gelu", "gelu_tanh"):
                continue
            m = g.single_user(plan.end)
            if m is None or not is_observe(g.value(m)):
                continue
            # fused residual adds read a blocked conv's int8 output as it is
            readers = {a for a, o in fused_adds.items() if rc.unpooled(g, o).same_as(m)} if layer.id in blocked \
                else set()
            cons = int8_consumers(g, m, layer_by_var, readers)
            if not cons:
                continue
            # a blocked conv's int8 output is blocked: only blocked convs may read it, directly
            if layer.id in blocked and not rc.direct_conv_consumers(g, m, blocked, layer_by_var, readers):
                continue
            key = observe_key(g.value(m))
            if key in self.smooth and (layer.kind != "dense" or not self.chain_smoothed):
                continue
            ps = {self.act_params(key, c.kind) for c, _ in cons}
            if len(ps) == 1 and None not in ps:
                out_q[layer.id] = (key, ps.pop())

        chain_skip = {v for p in plans.values() for v in p.chain if not v.same_as(p.end)}
        by_var = {layer.var: layer for layer in quantized}
        final: dict = {}
        int8_out: dict = {}
        int8_blocked: dict = {}  # key -> (blocked int8 value, QParams) from blocked int8 convs
        qcache: dict = {}

        def qroot(bb, key, root_old, vmap, p: QParams):
            hit = int8_out.get(key)
            if hit is not None and hit[1] == p:
                return hit[0]
            ck = (key, p)
            if ck not in qcache:
                x = vmap.get(root_old, root_old)
                shape = static_shape(root_old)
                sm = self.smooth.get(key)
                gv = add_prim_func(bb, quantize_func(shape, p.scale, p.zp, p.dtype, cfg.bits, per_channel=sm is not None),
                               "q_quantize")
                args = [x] if sm is None else [x, relax.const((1.0 / (sm.astype(np.float64) * p.scale)).astype(np.float32))]
                qcache[ck] = bb.emit(relax.call_tir(gv, args, relax.TensorType(shape, p.dtype)), name_hint=f"q_{key}")
            return qcache[ck]

        ocache: dict = {}

        def qoperand(bb, operand, vmap, p: QParams):
            ck = (operand, p)
            if ck in ocache:
                return ocache[ck]
            root, steps, factor, key = g.trace(operand)
            cur = qroot(bb, key, root, vmap, p)
            for st in steps:
                if isinstance(st, relax.TupleGetItem):
                    continue
                if op_name(st) == "relax.multiply":
                    continue
                from .graph import substitute

                args = [cur] + [substitute(a, vmap) for a in st.args[1:]]
                cur = bb.emit(relax.Call(st.op, args, st.attrs, st.ty_args))
            ocache[ck] = (cur, QParams(p.scale * factor, p.zp, p.dtype))
            return ocache[ck]

        bcache: dict = {}

        def blocked_root(bb, root, key, vmap, p: QParams, xi: int):
            """The observed value ``root`` as blocked int8: a blocked conv's output, or quantized
            (and blocked) from float; None where only the NCHW route applies."""
            hit = int8_blocked.get(key)
            if hit is not None and hit[1] == p:
                return hit[0]
            hit = int8_out.get(key)
            if (hit is not None and hit[1] == p) or key in self.smooth:
                return None
            ck = (key, p, xi)
            if ck not in bcache:
                bcache[ck] = rc.quantize_blocked(bb, add_prim_func, vmap.get(root, root), static_shape(root), p, cfg.bits,
                                                 xi)
            return bcache[ck]

        def qoperand_blocked(bb, operand, vmap, p: QParams, xi: int):
            """The operand as blocked int8 (see ``blocked_root``), through max-pools (they commute
            with quantization) in the blocked layout; other layout steps take the NCHW route."""
            root, steps, _factor, key = g.trace(operand)
            pools = [st for st in steps if not isinstance(st, relax.TupleGetItem)]
            if all(op_name(st) == "relax.nn.max_pool2d" for st in pools):
                cur = blocked_root(bb, root, key, vmap, p, xi)
                if cur is not None:
                    ck = (operand, p, "pooled")
                    if pools and ck not in bcache:
                        for st in pools:
                            cur = rc.max_pool_blocked(bb, cur, st.attrs)
                        bcache[ck] = cur
                    return (bcache[ck] if pools else cur), p
            xq, px = qoperand(bb, operand, vmap, p)
            ck = (operand, px)
            if ck not in bcache:
                bcache[ck] = rc.block_int(bb, add_prim_func, xq, px, xi)
            return bcache[ck], px

        def float_root(operand, vmap):
            """The float value ``operand`` is quantized from where nothing int8 or layout-changing
            stands between (a folded conv quantizes it itself), else None."""
            root, steps, _factor, key = g.trace(operand)
            if any(not isinstance(st, relax.TupleGetItem) for st in steps) or key in self.smooth \
                    or key in int8_blocked or key in int8_out:
                return None
            return vmap.get(root, root)

        def residual_operand(bb, other, vmap):
            """``(int8_conv.Residual, blocked value)`` for a fused residual add's other operand: a
            blocked conv's int8 output as it is, a blocked float output, or float NCHW blocked here."""
            _root, steps, _f, key = g.trace(other)
            pools = [s for s in steps if not isinstance(s, relax.TupleGetItem)]
            hit = int8_blocked.get(key) if all(op_name(s) == "relax.nn.max_pool2d" for s in pools) else None
            if hit is not None:  # a blocked conv's int8 output, max-pooled as the convs reading it are
                val, p = qoperand_blocked(bb, other, vmap, hit[1], BLOCK) if pools else hit
                return Residual(p.dtype, p.scale, p.zp), val
            val = final.get(other, vmap.get(other, other))
            if len(static_shape(val)) == 5:  # a float-blocked conv output
                return Residual(), val
            return Residual(), rc.block_float(bb, add_prim_func, val)

        def emit_dense(bb, layer: Layer, vmap):
            plan = plans[layer.id]
            x_old = layer.operands[0]
            p_in = self.act_params(layer.keys[0], "dense")
            xq, px = qoperand(bb, x_old, vmap, p_in)
            shp = static_shape(x_old)
            m, k = int(np.prod(shp[:-1])), shp[-1]
            if len(shp) != 2:
                xq = bb.emit(relax.op.reshape(xq, (m, k)))
            if layer.id not in sparse:  # the int8 BSR kernel takes full-width weights
                bits = self.provider.dense_weight_bits(k, layer.weight.shape[0], cfg.bits, cfg.reduce_range)
                if bits != cfg.bits:
                    self.weight_bits[layer.id] = bits
            wq, s_w = self._weights(layer)
            n = wq.shape[0]
            epi, eparams, extra = self._epilogue(layer, plan, px, s_w, wq.shape[0], out_q.get(layer.id))
            bias = qmath.bias_int32(plan.bias, px.scale, s_w, wq, px.zp)
            if layer.id in sparse:
                from ..sparse_format.bsr import pack_bsr

                block = sparse[layer.id]
                func = self.provider.sparse_dense_func(m, k, n, block, px.dtype, plan.act)
                gv = add_prim_func(bb, func, f"q_{layer.id}_bsr")
                w = pack_bsr(wq, block)
                args = [xq, relax.const(w.data), relax.const(w.indices), relax.const(w.indptr), relax.const(bias),
                        relax.const(eparams[0])]
                out = bb.emit(relax.call_tir(gv, args, relax.TensorType((m, n), "float32")),
                              name_hint=f"{layer.id}_out")
                if static_shape(plan.end) != (m, n):
                    out = bb.emit(relax.op.reshape(out, static_shape(plan.end)))
                self._record(layer, plan, px, s_w, epi, f"bsr{block[0]}x{block[1]}", extra)
                self.report[-1].update(kernel=f"int8 bsr {block[0]}x{block[1]}", density=w.density)
                return self._finish(bb, layer, plan, out, epi)
            layout = self.provider.dense_layout(m, k, n, int(np.abs(wq.astype(np.int16)).max(initial=0)))
            func, layout = self._dense_kernel(m, k, n, px.dtype, layout, epi)
            gv = add_prim_func(bb, func, f"q_{layer.id}")
            args = [xq, relax.const(pack_weight(wq, layout)), relax.const(bias)] + [relax.const(a) for a in eparams]
            out = bb.emit(relax.call_tir(gv, args, relax.TensorType((m, n), epi.out_dtype)),
                          name_hint=f"{layer.id}_out")
            end_shape = static_shape(plan.end)
            if end_shape != (m, n):
                out = bb.emit(relax.op.reshape(out, end_shape))
            self._record(layer, plan, px, s_w, epi, layout, extra)
            return self._finish(bb, layer, plan, out, epi)

        def emit_conv(bb, layer: Layer, vmap):
            plan = plans[layer.id]
            x_old = layer.operands[0]
            p_in = self.act_params(layer.keys[0], "conv2d")
            at = g.value(layer.var).attrs
            depthwise = rc.is_depthwise(layer, at)  # skipped above where the target has no blocked kernel
            # the int8 Winograd's int16 products take full-width weights (no AVX2 saturation)
            wino = rc.winograd_tile(self.provider, layer, at, cfg.winograd) if layer.id in blocked and not depthwise \
                else 0
            if layer.id in blocked and not depthwise and not wino and layer.id not in self.given_weights:
                bits = self.provider.conv_weight_bits(cfg.bits, cfg.reduce_range, p_in.zp)
                if bits != cfg.bits:
                    self.weight_bits[layer.id] = bits
            wq, s_w = self._weights(layer)
            dot = rc.blocked_dot(self.provider, layer, wq, p_in.zp) if layer.id in blocked and not depthwise else None
            fold = self.provider.conv_fold(wq.shape[1], wq.shape[3], int(at.dilation[1]), dot) \
                if dot is not None and not wino and cfg.fold_taps else None
            x_float = float_root(x_old, vmap) if fold else None
            if x_float is not None:
                xq, px = x_float, p_in
                fold_xi, dot = fold
            elif depthwise:
                xq, px = qoperand_blocked(bb, x_old, vmap, p_in, BLOCK)
            elif dot is not None:
                xq, px = qoperand_blocked(bb, x_old, vmap, p_in, in_block(wq.shape[1], dot.kb))
            else:
                xq, px = qoperand(bb, x_old, vmap, p_in)
            epi, eparams, extra = self._epilogue(layer, plan, px, s_w, wq.shape[0], out_q.get(layer.id))
            bias = qmath.bias_int32(plan.bias, px.scale, s_w, wq, 0 if wino else px.zp)
            res = None if plan.residual is None else residual_operand(bb, plan.residual, vmap)
            nchw_out = epi.kind == "float" and layer.id not in float_blocked
            if depthwise:
                out = rc.emit_blocked_depthwise(bb, add_prim_func, self.provider, layer, at, xq, px, wq, bias, epi,
                                                eparams, nchw_out, res)
            elif wino:
                out = rc.emit_winograd_conv(bb, add_prim_func, self.provider, layer, at, xq, px, wq, bias, epi,
                                            eparams, wino, cfg.bits, nchw_out, res)
            elif x_float is not None:
                out = rc.emit_folded_conv(bb, add_prim_func, self.provider, layer, at, x_float, static_shape(x_old), px,
                                          cfg.bits, wq, bias, epi, eparams, dot, fold_xi, nchw_out, res)
            elif dot is not None:
                out = rc.emit_blocked_conv(bb, add_prim_func, self.provider, layer, at, xq, px, wq, bias, epi, eparams,
                                           dot, nchw_out, res)
            else:
                out = rc.emit_nchw_conv(bb, add_prim_func, layer, at, static_shape(x_old), xq, px, wq, bias, epi, eparams)
            end_shape = static_shape(plan.end)
            if epi.kind == "float" and end_shape != static_shape(layer.var) and layer.id not in float_blocked:
                out = bb.emit(relax.op.reshape(out, end_shape))
            is_blocked = depthwise or dot is not None
            layout = f"hwc, {fold_xi} bytes a pixel" if x_float is not None else f"nchw{static_shape(xq)[-1]}c"
            self._record(layer, plan, px, s_w, epi, layout if is_blocked else "oihw", extra)
            if is_blocked:
                self.report[-1]["kernel"] = (f"{self.provider.name} blocked int8 "
                                             f"{'depthwise' if depthwise else 'conv'}"
                                             + (f", Winograd F({wino}, 3)" if wino else "")
                                             + (", kernel rows folded into the channels" if x_float is not None else ""))
            if res is not None:
                self.report[-1]["epilogue"]["residual"] = res[0].dtype
            if layer.id in float_blocked:
                self.report[-1]["output"] = "float32 blocked"
            return self._finish(bb, layer, plan, out, epi, blocked=is_blocked)

        def emit_bmm(bb, layer: Layer, vmap):
            a_old, b_old = layer.operands
            pa = self.act_params(layer.keys[0], "batch_matmul")
            pb = self.act_params(layer.keys[1], "batch_matmul")
            aq, pa = qoperand(bb, a_old, vmap, pa)
            bq, pb = qoperand(bb, b_old, vmap, pb)
            sa, sb = static_shape(a_old), static_shape(b_old)
            batch, m, k, n = sa[:-2], sa[-2], sa[-1], sb[-1]
            scale = pa.scale * pb.scale
            oq = out_q.get(layer.id)
            epi = Epilogue() if oq is None else Epilogue("float_requant", None, oq[1].dtype, oq[1].scale, oq[1].zp,
                                                         cfg.bits, lrint=self.provider.lrint_requant)
            f = batch_matmul_func(tuple(batch), m, k, n, pa.dtype, pb.dtype, scale, epi)
            f = self.provider.schedule_batch_matmul(f) or f
            gv = add_prim_func(bb, f, f"q_{layer.id}")
            out = bb.emit(relax.call_tir(gv, [aq, bq], relax.TensorType((*batch, m, n), epi.out_dtype)),
                          name_hint=f"{layer.id}_out")
            plan = plans[layer.id]
            self.layer_params[layer.id] = {"inputs": [pa, pb], "epilogue": epi, "plan": plan}
            self.report.append({"layer": layer.id, "names": list(layer.names), "kind": layer.kind, "status": "int8",
                                "inputs": [pa.to_dict(), pb.to_dict()], "output": epi.out_dtype})
            return self._finish(bb, layer, plan, out, epi)

        def on_binding(bb, b, value, vmap):
            var = b.var
            if var in by_var:
                layer = by_var[var]
                res = {"dense": emit_dense, "conv2d": emit_conv, "batch_matmul": emit_bmm}[layer.kind](bb, layer, vmap)
                if layer.id in out_q:
                    dest = int8_blocked if layer.id in blocked else int8_out
                    dest[out_q[layer.id][0]] = (res[1], out_q[layer.id][1])
                final[plans[layer.id].end] = res[0]
                return res[0] if plans[layer.id].end.same_as(var) else SKIP
            if var in chain_skip:
                return SKIP
            if var in final:
                return final[var]
            if is_observe(value):
                return value.args[1]
            return None

        for layer in layers:
            if layer.skipped:
                self.report.append({"layer": layer.id, "names": list(layer.names), "kind": layer.kind,
                                    "status": "fp32", "reason": layer.reason})
        out = rebuild(mod, on_binding)
        out = relax.transform.DeadCodeElimination(["main"])(out)
        self.layers = layers
        return out

    # ---- helpers -----------------------------------------------------------------------------
    def _weights(self, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
        """Weight codes and per-channel scales (as wide as realize chose for the layer, by default the
        config's bits); pre-quantized weights (QDQ models) are taken as they are."""
        bits = self.weight_bits.get(layer.id, self.config.bits)
        sm = self.smooth.get(layer.keys[0]) if layer.kind == "dense" and layer.keys else None
        if sm is not None:
            w = (layer.weight.astype(np.float64) * sm.astype(np.float64)[None, :]).astype(np.float32)
            return self._round(layer, w, bits, sm)
        given = self.given_weights.get(layer.id)
        if given is None and layer.stored is not None and self.given_weights:
            given = self.given_weights.get(fingerprint(layer.stored))
        if given is not None:
            wq, s, axis = given  # codes in the stored constant's orientation, scales along `axis`
            if layer.kind == "dense" and layer.stored.shape != layer.weight.shape:
                wq, axis = wq.T, 1 - axis  # stored [K, N]
            n = layer.weight.shape[0]
            s = np.asarray(s, np.float32).reshape(-1)
            if s.size == 1:
                s = np.full(n, s[0], np.float32)
            elif axis != 0 or s.size != n:
                return qmath.quantize_weight(layer.weight, bits, self.config.per_channel)
            return np.ascontiguousarray(wq.astype(np.int8)), s
        return self._round(layer, layer.weight, bits)

    def _round(self, layer: Layer, w: np.ndarray, bits: int, input_scale=None) -> tuple[np.ndarray, np.ndarray]:
        """Codes and scales of float weights: the nearest-rounding scales, GPTQ codes where the
        quantizer measured the layer's inputs."""
        q, s = qmath.quantize_weight(w, bits, self.config.per_channel)
        if self.rounding is not None:
            g = self.rounding.codes(layer.id, w, s, bits, input_scale)
            if g is not None:
                self.gptq_layers.add(layer.id)
                return g, s
        return q, s

    def _sparse_layers(self, quantized: list[Layer], plans: dict) -> dict[str, tuple[int, int]]:
        """Dense layers that run the int8 BSR kernel (``QuantConfig.sparse_threshold``): id → block."""
        cfg = self.config
        target = self.provider.target
        if cfg.sparse_threshold is None or target is None:
            return {}
        from ..sparse_format.bsr import block_density

        block = tuple(cfg.sparse_block or target.sparse_block)
        out = {}
        for layer in quantized:
            # Without an int8 BSR kernel for the target (or the fused activation), int8 dense takes it.
            if layer.kind != "dense" or not self.provider.has_sparse_dense(plans[layer.id].act):
                continue
            w = np.asarray(layer.weight)
            if 1.0 - block_density(w.reshape(w.shape[0], -1), block) >= cfg.sparse_threshold:
                out[layer.id] = block
        return out

    def _epilogue(self, layer, plan: Plan, px: QParams, s_w, n, oq):
        epi, params, po = self._choose_epilogue(layer, plan, px, s_w, n, oq)
        if self.provider.lrint_requant:
            epi = dataclasses.replace(epi, lrint=True)
        return epi, params, po

    def _choose_epilogue(self, layer, plan: Plan, px: QParams, s_w, n, oq):
        cfg = self.config
        deq = (np.float64(px.scale) * s_w.astype(np.float64)).astype(np.float32)
        if oq is None:
            return Epilogue("float", plan.act), [deq], None
        key, po = oq
        s_out = np.float64(po.scale) * self.smooth.get(key, np.ones(n)).astype(np.float64)  # per channel
        act = plan.act
        if plan.residual is not None:  # the residual is added in float32 before requantizing
            return (Epilogue("float_requant", act, po.dtype, po.scale, po.zp, cfg.bits),
                    [deq, (1.0 / s_out).astype(np.float32)], po)
        if act == "relu6" and key not in self.smooth:
            _, hi = qmath.qrange(po.dtype, cfg.bits)
            if (hi - po.zp) * po.scale <= 6.0 * (1 + 1e-6):
                act = "relu"  # the output's own clamp stops at or below 6: ReLU6 is a ReLU here
        if act in (None, "relu") and layer.kind == "conv2d" and self.provider.conv_requant_in_float:
            m = (np.float64(px.scale) * s_w.astype(np.float64) / s_out).astype(np.float32)
            return Epilogue("requant_f32", act, po.dtype, po.scale, po.zp, cfg.bits), [m], po
        if act in (None, "relu"):
            mult, shift = qmath.fixed_point(np.float64(px.scale) * s_w.astype(np.float64) / s_out)
            return Epilogue("requant", act, po.dtype, po.scale, po.zp, cfg.bits), [mult, shift], po
        return (Epilogue("float_requant", plan.act, po.dtype, po.scale, po.zp, cfg.bits),
                [deq, (1.0 / s_out).astype(np.float32)], po)

    def _dense_kernel(self, m, k, n, a_dtype, layout, epi):
        func = dense_func(m, k, n, a_dtype, layout, epi)
        try:
            sch = self.provider.schedule_dense(func, layout, m, k, n)
        except Exception:  # noqa: BLE001 - a schedule that does not apply: use the plain layout
            sch = None
            layout = "nk"
            func = dense_func(m, k, n, a_dtype, layout, epi)
        if sch is not None:
            return sch.with_attr("op_pattern", 8), layout
        if layout != "nk" and layout != "kn":
            layout = "nk"
            func = dense_func(m, k, n, a_dtype, layout, epi)
        return func, layout

    def _record(self, layer, plan, px, s_w, epi, layout, extra):
        self.layer_params[layer.id] = {"inputs": [px], "s_w": s_w, "epilogue": epi, "plan": plan, "layout": layout,
                                       "smooth": self.smooth.get(layer.keys[0]) if layer.kind == "dense" else None}
        self.report.append({
            "layer": layer.id, "names": list(layer.names), "kind": layer.kind, "status": "int8",
            "inputs": [px.to_dict()], "weight_scale_range": [float(s_w.min()), float(s_w.max())],
            "epilogue": {"kind": epi.kind, "act": epi.act, "bias": plan.bias is not None},
            "output": epi.out_dtype, "layout": layout, "weight_bits": self.weight_bits.get(layer.id, self.config.bits),
            "weight_rounding": "gptq" if layer.id in self.gptq_layers else "nearest",
            "kernel": self.provider.name if layout not in ("nk", "oihw") else "default schedule"})

    def _finish(self, bb, layer, plan, out, epi, blocked: bool = False):
        """``(value for the chain's end var, int8 output or None)``."""
        if epi.kind == "float":
            return out, None
        shape = static_shape(plan.end)
        if blocked:
            return rc.dequantize_blocked(bb, add_prim_func, out, shape, epi), out
        gv = add_prim_func(bb, dequantize_func(shape, epi.out_scale, epi.out_zp, epi.out_dtype), "q_dequantize")
        deq = bb.emit(relax.call_tir(gv, [out], relax.TensorType(shape, "float32")))
        return deq, out


