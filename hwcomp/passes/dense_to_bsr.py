"""DenseToBSR: replace block-sparse constant-weight matmuls (and 1x1 conv2d) by hwcomp BSR kernels.

A Linear imported from torch is ``matmul(x, permute_dims(W))`` (+ ``add(bias)``, reshapes, maybe a
ReLU or GELU after). When the constant ``W[N, K]`` has block sparsity ≥ ``threshold`` for the target's block
``(r, c)``, the chain is replaced by ``call_tir(bsr_matmul, x2d, data, indices, indptr[, bias])``: the
packed weights become constants, the bias and a ReLU or GELU become the kernel's epilogue. A 1x1 conv2d
(NCHW/OIHW, stride 1, no padding, groups 1) is the same product over pixels: NCHW → [pixels, C] →
BSR → back to NCHW; other convolutions (3x3, strided, padded, dilated; groups 1) go through an
im2col stage ``[pixels, C·kh·kw]`` first (the weight is pruned and packed as ``[O, C·kh·kw]``).

Hardware-aware choice: when the target runs on this machine, each eligible layer's dense
(default-scheduled) matmul and its BSR kernel are built and timed, and BSR is used only when it is at
least ``min_gain`` times faster; timings are cached in ``~/.cache/hwcomp/sparse_choices/<target>.json``
keyed by shape, block and density (a convolution is timed as its ``[pixels, C·kh·kw] × [C·kh·kw, O]``
product on both sides; the im2col stage is not counted). For targets that cannot run here (cross
targets, GPUs) the threshold alone decides. Decisions are kept in :attr:`DenseToBSR.report` (:class:`SparseReport`).

Rewritten layers no longer match (their weight is gone), and the decision for the others is
deterministic (threshold, or cached timings), so running the pass twice changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tvm
from tvm import relax
from tvm.ir import GenericConst
from tvm.relax.expr_functor import PyExprMutator, mutator

from hwcomp.errors import HwcompError
from hwcomp.kernels.bsr import BSRMatrix, block_density, pack_bsr
from hwcomp.records.locations import BSR_CHOICES, user_database_dir
from hwcomp.records.store import MeasurementStore
from hwcomp.relax_graph import const_array, op_name, static_shape
from hwcomp.target import Target, get_target

from .prune_weights import PruneWeights

# Rough model for targets we cannot time: a BSR kernel reaches about this fraction of the dense
# kernel's FLOP rate, so the expected gain is BSR_EFFICIENCY / density (only used for the report).
BSR_EFFICIENCY = 0.5


#: The BSR choices (dense vs BSR timings and the best kernel knobs per shape) sit in the tuning
#: database directory beside MetaSchedule's records, so ``hwcomp tune`` and compile share them.


# ---- report ----------------------------------------------------------------------------------


@dataclasses.dataclass
class LayerDecision:
    """What :class:`DenseToBSR` did with one matmul / 1x1 conv."""

    name: str
    kind: str  # "matmul", "conv1x1" or "conv" (im2col)
    m: int
    k: int
    n: int
    block: tuple[int, int]
    density: float  # fraction of nonzero blocks
    chosen: str  # "bsr" or "dense"
    basis: str  # "measured", "threshold", or why the layer was skipped
    dense_ms: float | None = None
    bsr_ms: float | None = None
    expected_gain: float | None = None  # dense time / BSR time (measured or modelled)
    epilogue: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["block"] = list(self.block)
        return d


@dataclasses.dataclass
class SparseReport:
    """Per-layer decisions of one :class:`DenseToBSR` run (print with :meth:`table`)."""

    target: str
    threshold: float
    layers: list[LayerDecision] = dataclasses.field(default_factory=list)

    @property
    def n_sparse(self) -> int:
        return sum(d.chosen == "bsr" for d in self.layers)

    def to_dict(self) -> dict:
        return {"target": self.target, "threshold": self.threshold, "n_sparse": self.n_sparse,
                "layers": [d.to_dict() for d in self.layers]}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self) -> str:
        def ms(v):
            return f"{v:.3f}" if v is not None else "-"

        rows = [(f"{'layer':<14}{'kind':<9}{'M x K -> N':<20}{'block':<7}{'density':>8}  {'chosen':<7}"
                 f"{'dense ms':>9}{'bsr ms':>9}{'gain':>7}  basis")]
        for d in self.layers:
            gain = f"{d.expected_gain:.2f}" if d.expected_gain is not None else "-"
            rows.append(f"{d.name:<14}{d.kind:<9}{f'{d.m}x{d.k}->{d.n}':<20}{f'{d.block[0]}x{d.block[1]}':<7}"
                        f"{d.density:>8.3f}  {d.chosen:<7}{ms(d.dense_ms):>9}{ms(d.bsr_ms):>9}{gain:>7}  {d.basis}")
        rows.append(f"{self.n_sparse}/{len(self.layers)} layers sparse on {self.target}")
        return "\n".join(rows)


# ---- kernels and measurement -------------------------------------------------------------------


def bsr_primfunc(target: Target, m: int, k: int, n: int, block: tuple[int, int], bias: bool,
                 activation: str, knobs=None):
    """The target's BSR kernel for one shape (CUDA, AArch64 or x86 generator)."""
    if target.is_gpu:
        from hwcomp.schedules.cuda.bsr import bsr_kernel
    elif target.arch == "aarch64":
        from hwcomp.schedules.arm.bsr import bsr_kernel
    else:
        from hwcomp.schedules.x86.bsr import bsr_kernel
    return bsr_kernel(target, m, k, n, block, knobs=knobs, bias=bias, activation=activation)


def _time_ms(fn, args, dev, target_ms: float = 40.0, repeat: int = 5) -> float:
    """Min over ``repeat`` batches (each long enough to fill ``target_ms``) of the mean call time.

    The minimum, because other work on the machine only ever adds time."""
    fn(*args)  # warm-up: the first call may allocate
    t0 = time.perf_counter()
    fn(*args)
    number = max(1, min(1000, int(target_ms / 1e3 / max(time.perf_counter() - t0, 1e-6))))
    best = math.inf
    for _ in range(repeat):
        dev.sync()
        t0 = time.perf_counter()
        for _ in range(number):
            fn(*args)
        dev.sync()
        best = min(best, (time.perf_counter() - t0) / number)
    return best * 1e3


def measure_dense_ms(target: Target, m: int, k: int, n: int, bias: bool = True, seed: int = 0) -> float:
    """Latency of ``x[M,K] @ Wt[K,N] (+ b)`` compiled with hwcomp's default schedules on this machine."""
    from hwcomp.build import compile_module, schedule

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), "float32"))
    w = relax.Var("w", relax.TensorType((k, n), "float32"))
    params = [x, w]
    bv = None
    if bias:
        bv = relax.Var("b", relax.TensorType((n,), "float32"))
        params.append(bv)
    with bb.function("main", params):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, w))
            if bv is not None:
                y = bb.emit(relax.op.add(y, bv))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    ex = compile_module(schedule(bb.get(), target), target)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    rng = np.random.default_rng(seed)
    shapes = [(m, k), (k, n)] + ([(n,)] if bias else [])
    args = [tvm.runtime.tensor(rng.standard_normal(s).astype("float32"), dev) for s in shapes]
    return _time_ms(vm["main"], args, dev)


def measure_bsr_ms(target: Target, m: int, w: BSRMatrix, bias: bool = True, knobs=None, seed: int = 0) -> float:
    """Latency of the target's BSR kernel for ``x[M, K] @ W.T (+ b)`` on this machine."""
    n, k = w.shape
    func = bsr_primfunc(target, m, k, n, w.block, bias, "none", knobs)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target())
    dev = tvm.cpu()
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal((m, k)).astype("float32"), w.data, w.indices, w.indptr]
    if bias:
        args.append(rng.standard_normal(n).astype("float32"))
    args.append(np.zeros((m, n), "float32"))
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args]
    return _time_ms(ex.mod["main"], args, dev)


def _dense_key(m, k, n) -> str:
    return f"dense:{m}x{k}x{n}"


def _bsr_key(m, k, n, block, density) -> str:
    return f"bsr:{m}x{k}x{n}:{block[0]}x{block[1]}:d{density:.2f}"


# ---- graph matching --------------------------------------------------------------------------


def _count_uses(func: relax.Function) -> dict:
    uses: dict = {}

    def visit(e):
        if isinstance(e, relax.Var):
            uses[e] = uses.get(e, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)  # visits uses only, not binding definitions
    return uses


@dataclasses.dataclass
class _Site:
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
    conv: _ConvGeometry | None = None


def _consumers(func: relax.Function) -> dict:
    """var -> list of (consumer var, its value) for every binding."""
    out: dict = {}
    for var, val in relax.analysis.get_var2val(func).items():
        if isinstance(val, relax.Call):
            for a in val.args:
                if isinstance(a, relax.Var):
                    out.setdefault(a, []).append((var, val))
    return out


def _match_sites(func: relax.Function) -> list[_Site]:
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


def _match_matmul(var, call, var2val) -> _Site | None:
    x, wexpr = call.args
    wt = const_array(wexpr, var2val)
    x_shape, out_shape = static_shape(x), static_shape(var)
    if wt is None or wt.ndim != 2 or x_shape is None or out_shape is None or len(x_shape) < 1:
        return None
    if str(wt.dtype) != "float32" or str(x.ty.dtype) != "float32" or str(var.ty.dtype) != "float32":
        return None
    if x_shape[-1] != wt.shape[0]:
        return None
    return _Site(var, "matmul", x, x_shape, np.ascontiguousarray(wt.T), None, "none", out_shape, var.name)


def _match_conv(var, call) -> _Site | None:
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
    conv = _ConvGeometry(ws[2], ws[3], tuple(int(v) for v in a.strides), tuple(int(v) for v in a.padding),
                         tuple(int(v) for v in a.dilation))
    kind = "conv1x1" if conv.is_pointwise() else "conv"
    weight = w.value.numpy().reshape(ws[0], -1)  # [O, C·kh·kw], C major: the im2col column order
    return _Site(var, kind, call.args[0], x_shape, weight, None, "none", out_shape, var.name, conv)


@dataclasses.dataclass(frozen=True)
class _ConvGeometry:
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


def _rows(site: _Site) -> int:
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


def _absorb_epilogue(site: _Site, uses: dict, consumers: dict, var2val: dict) -> None:
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


# ---- the pass --------------------------------------------------------------------------------


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, plan: dict, emit_site: Callable):
        super().__init__(mod)
        self.plan = plan
        self.emit_site = emit_site

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        site = self.plan.get(binding.var)
        if site is None:
            return super().visit_var_binding_(binding)
        value = self.builder_.normalize(self.emit_site(self, site))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, value))


class DenseToBSR:
    """``IRModule -> IRModule`` pass: eligible constant-weight matmuls / convs → BSR kernels.

    ``threshold``: minimum block sparsity (fraction of all-zero ``block`` tiles) for a layer to be
    considered. ``block``: ``(r, c)`` (default: the target's ``sparse_block``). ``min_gain``: on a
    target that runs here, BSR is used only when measured at least this much faster than dense.
    ``measure``: None = measure when the target runs here; False = threshold only. When measuring,
    the four likeliest kernel knob sets are timed per shape and the fastest is kept; ``tune=True``
    times the whole candidate list. ``cache_dir``: the tuning database directory the timings are kept
    in (default: the target's, ``~/.cache/hwcomp/tuning/<target>``; file ``hwcomp_bsr.json``). After a call, :attr:`report` holds the decisions.
    """

    __name__ = "DenseToBSR"

    def __init__(self, target: str | Target = "host", threshold: float = 0.7, block: tuple[int, int] | None = None,
                 min_gain: float = 1.1, measure: bool | None = None, tune: bool = False,
                 cache_dir: str | Path | None = None, log: Callable[[str], None] | None = None):
        self.target = get_target(target)
        self.threshold = float(threshold)
        self.block = tuple(int(v) for v in (block or self.target.sparse_block))
        self.min_gain = float(min_gain)
        self.measure = self.target.runs_here() if measure is None else bool(measure and self.target.runs_here())
        self.tune = tune
        if cache_dir is None:
            cache_dir = user_database_dir(self.target)
        self.cache = MeasurementStore(Path(cache_dir) / BSR_CHOICES)
        self.log = log or (lambda s: None)
        self.report = SparseReport(self.target.name, self.threshold)

    def __repr__(self) -> str:
        return (f"DenseToBSR(target={self.target.name!r}, threshold={self.threshold}, "
                f"block={self.block[0]}x{self.block[1]}, min_gain={self.min_gain})")

    # -- decisions --

    def _decide(self, site: _Site) -> tuple[LayerDecision, BSRMatrix | None, object]:
        m = _rows(site)
        n, k = site.weight.shape
        epi = "+".join(([] if site.bias is None else ["bias"]) + ([] if site.activation == "none" else [site.activation]))
        density = block_density(site.weight, self.block)
        d = LayerDecision(site.name, site.kind, m, k, n, self.block, round(density, 4), "dense", "threshold",
                          epilogue=epi)
        if 1.0 - density < self.threshold or m == 0:
            d.basis = f"sparsity {1 - density:.2f} < threshold"
            return d, None, None
        bsr = pack_bsr(site.weight, self.block)
        if not self.measure:
            d.chosen = "bsr"
            d.expected_gain = round(BSR_EFFICIENCY / max(density, 1e-3), 2)
            return d, bsr, None
        dense_ms, bsr_ms, knobs = self._measured(m, k, n, bsr, density)
        d.basis, d.dense_ms, d.bsr_ms = "measured", dense_ms, bsr_ms
        d.expected_gain = round(dense_ms / bsr_ms, 2)
        if d.expected_gain >= self.min_gain:
            d.chosen = "bsr"
            return d, bsr, knobs
        return d, None, None

    def _measured(self, m, k, n, bsr: BSRMatrix, density: float):
        dkey = _dense_key(m, k, n)
        hit = self.cache.get(dkey)
        fresh = hit is None
        if fresh:
            hit = {"ms": round(measure_dense_ms(self.target, m, k, n), 5)}
            self.cache.put(dkey, hit)
        dense_ms = hit["ms"]
        skey = _bsr_key(m, k, n, self.block, density)
        hit = self.cache.get(skey)
        if hit is None or (self.tune and not hit.get("tuned")):
            fresh = True
            hit = self._time_bsr(m, bsr)
            self.cache.put(skey, hit)
        knobs = self._knobs_from(hit.get("knobs"))
        if fresh:
            self.log(f"  measured {m}x{k}->{n} density {density:.3f}: dense {dense_ms:.3f} ms, "
                     f"bsr {hit['ms']:.3f} ms, knobs {hit.get('knobs')}")
        return dense_ms, hit["ms"], knobs

    def _knob_space(self, m: int) -> list:
        if self.target.is_gpu:
            return []
        if self.target.arch == "aarch64":
            from hwcomp.schedules.arm.bsr import knob_candidates
        else:
            from hwcomp.schedules.x86.bsr import knob_candidates

        return knob_candidates(self.target.vector_bits, self.block, m)

    def _knobs_from(self, d: dict | None):
        if not d or self.target.is_gpu:
            return None
        from hwcomp.schedules.x86.bsr import BSRKnobs

        return BSRKnobs(**d)

    def _time_bsr(self, m: int, bsr: BSRMatrix) -> dict:
        # Without tune, the four likeliest knob sets (a few seconds a shape); with tune, all of them.
        space = self._knob_space(m)
        if not space:
            return {"ms": round(measure_bsr_ms(self.target, m, bsr), 5), "knobs": None, "tuned": False}
        best = None
        for knobs in space if self.tune else space[:4]:
            ms = measure_bsr_ms(self.target, m, bsr, knobs=knobs)
            if best is None or ms < best[0]:
                best = (ms, knobs)
        return {"ms": round(best[0], 5), "knobs": best[1].to_dict(), "tuned": self.tune}

    # -- rewrite --

    def __call__(self, mod: tvm.IRModule) -> tvm.IRModule:
        self.report = SparseReport(self.target.name, self.threshold)
        out = mod
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            plan: dict = {}
            for i, site in enumerate(_match_sites(func)):
                site.name = f"L{i}:{site.name}"
                decision, bsr, knobs = self._decide(site)
                self.report.layers.append(decision)
                if bsr is not None:
                    plan[site.root] = (site, bsr, knobs)
            if not plan:
                continue
            rewriter = _Rewriter(out, plan, self._emit)
            new_func = rewriter.visit_expr(func)
            out = rewriter.builder_.get()
            out[gv] = new_func
        if out is not mod:
            out = relax.transform.DeadCodeElimination()(out)
        return out

    def _emit(self, rw: _Rewriter, planned) -> relax.Expr:
        site, bsr, knobs = planned
        bb = rw.builder_
        n, k = site.weight.shape
        x = rw.visit_expr(site.x)
        m = _rows(site)
        if site.kind == "conv1x1":
            x = bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
        elif site.kind == "conv":
            x = bb.emit_te(site.conv.im2col(site.x_shape, site.out_shape[2:]), x, primfunc_name_hint="im2col")
        if static_shape(x) != (m, k):
            x = bb.emit(relax.op.reshape(x, (m, k)))
        func = bsr_primfunc(self.target, m, k, n, bsr.block, site.bias is not None, site.activation, knobs)
        # Drop the script's symbol name: every kernel gets its own when the module is built.
        gv = bb.add_func(func.without_attr("global_symbol"), "bsr_matmul")
        args = [x, relax.const(bsr.data), relax.const(bsr.indices), relax.const(bsr.indptr)]
        if site.bias is not None:
            args.append(relax.const(np.ascontiguousarray(site.bias, dtype="float32")))
        y = relax.call_tir(gv, args, relax.TensorType((m, n), "float32"))
        if site.kind != "matmul":
            nb, _, ho, wo = site.out_shape
            y = bb.emit(y)
            y = bb.emit(relax.op.reshape(y, (nb, ho, wo, n)))
            return relax.op.permute_dims(y, [0, 3, 1, 2])
        if tuple(site.out_shape) != (m, n):
            y = bb.emit(y)
            return relax.op.reshape(y, site.out_shape)
        return y


def sparse_passes(target: str | Target, sparsity: float | None = None, block: tuple[int, int] | None = None,
                  threshold: float = 0.7, **dense_to_bsr_options) -> list:
    """The compression passes for ``hwcomp compile --sparsity S [--block RxC] [--sparse-threshold T]``.

    With ``sparsity``: block-prune every matmul / conv weight to it, then convert. Without: the model
    is taken as it is, and weights that are already block-sparse (pre-pruned) are converted.
    """
    target = get_target(target)
    block = tuple(block) if block else target.sparse_block
    passes: list = []
    if sparsity is not None:
        passes.append(PruneWeights(sparsity=sparsity, block=block))
    passes.append(DenseToBSR(target, threshold=threshold, block=block, **dense_to_bsr_options))
    return passes


def check_sparse_options(sparsity: float | None, threshold: float | None, block: str | None) -> None:
    """The ranges of the sparse options, and no option that would be ignored (``block`` alone).

    The messages name the ``hwcomp compile`` / ``hwcomp tune`` flags these options come from."""
    if sparsity is not None and not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise HwcompError(f"--sparsity must be in [0, 1), got {sparsity}")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise HwcompError(f"--sparse-threshold must be in (0, 1), got {threshold}")
    if block and sparsity is None and threshold is None:
        raise HwcompError(f"--block {block} needs --sparsity S (prune to S) or --sparse-threshold T "
                          "(convert layers already at least T sparse); alone it would be ignored")


def sparse_passes_from_options(options, target: str | Target, tune: bool = False,
                               log: Callable[[str], None] | None = None) -> list:
    """The sparse passes of compile / tune options (none when neither ``sparsity`` nor
    ``sparse_threshold`` is given).

    ``options``: any object with attributes ``sparsity``, ``block`` (``"RxC"`` text or None),
    ``sparse_threshold`` and optionally ``db`` (an ``argparse.Namespace`` of ``hwcomp compile`` or
    ``hwcomp tune`` is one). BSR choices are read from (and, with ``tune``, measured over the whole knob
    space into) the tuning database ``db``, or the target's own."""
    sparsity = getattr(options, "sparsity", None)
    threshold = getattr(options, "sparse_threshold", None)
    block = getattr(options, "block", None)
    check_sparse_options(sparsity, threshold, block)
    if sparsity is None and threshold is None:
        return []
    try:
        parsed = parse_block(block) if block else None
    except ValueError as e:
        raise HwcompError(str(e)) from None
    return list(sparse_passes(target, sparsity, parsed, threshold or 0.7, tune=tune,
                              cache_dir=getattr(options, "db", None), log=log))


def parse_block(text: str) -> tuple[int, int]:
    """``"16x1"`` → ``(16, 1)`` (for the CLI)."""
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"block must look like RxC (e.g. 16x1), got {text!r}") from None
    if r < 1 or c < 1:
        raise ValueError(f"block dimensions must be positive, got {text!r}")
    return r, c
