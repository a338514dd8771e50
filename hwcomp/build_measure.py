"""The measurement :class:`~hwcomp.passes.dense_to_bsr.DenseToBSR` is given: compile and time dense
and BSR kernels on this machine. Passes take a latency function instead of building (they sit below
``build``); this module, above both, makes the one that builds."""

from __future__ import annotations

import math
import time

import numpy as np
import tvm
from tvm import relax

from hwcomp.passes.bsr.decide import BSRChoice, Latency
from hwcomp.passes.bsr.rewrite import bsr_primfunc
from hwcomp.schedules.bsr_spec import BsrSpec
from hwcomp.sparse_format.bsr import BSRMatrix
from hwcomp.target import Target, require_target


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
    from hwcomp.build import tir_pipeline

    n, k = w.shape
    func = bsr_primfunc(target, BsrSpec(m, k, n, w.block, bias), knobs)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target(), tir_pipeline=tir_pipeline(target))
    dev = tvm.cpu()
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal((m, k)).astype("float32"), w.data, w.indices, w.indptr]
    if bias:
        args.append(rng.standard_normal(n).astype("float32"))
    args.append(np.zeros((m, n), "float32"))
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args]
    return _time_ms(ex.mod["main"], args, dev)


def bsr_latency(target: Target) -> Latency | None:
    """``latency((m, k, n), "dense" | BSRChoice) -> ms`` measured on this machine (both with a bias,
    as the pass's kernels mostly are), or None when the target cannot run here (then the pass decides
    by its threshold)."""
    target = require_target(target, "bsr_latency")
    if not target.runs_here():
        return None

    def latency(shape: tuple[int, int, int], choice) -> float:
        m, k, n = shape
        if isinstance(choice, BSRChoice):
            return measure_bsr_ms(target, m, choice.matrix, knobs=choice.knobs)
        assert choice == "dense", choice
        return measure_dense_ms(target, m, k, n)

    return latency


__all__ = ["bsr_latency", "measure_bsr_ms", "measure_dense_ms"]
