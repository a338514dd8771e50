"""Lower, schedule and build a Relax module for a :class:`~hwcomp.target.Target`.

Order: bind weights → compression passes (the caller's) → fold weight layouts → lift weights back
to parameters → fast math (CPU) → legalize + fuse (applying a tuning database when one is given) → default schedules
for whatever the database does not cover → ``tvm.compile``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from . import cuda
from .errors import HwcompError
from .passes import FastMath, FoldWeightLayout, lift_constants
from .target import Target


def bind_weights(mod: tvm.IRModule, params: dict[str, np.ndarray]) -> tvm.IRModule:
    """Bind the named parameters of ``main`` as constants so passes can read and rewrite them."""
    return relax.transform.BindParams("main", {k: tvm.runtime.tensor(v) for k, v in params.items()})(mod)


def layout_for_target(mod: tvm.IRModule, target: Target, blocked_layout: bool = True, pack_weights: bool = True,
                      log: Callable[[str], None] | None = None, winograd: bool = True) -> tvm.IRModule:
    """The target's layouts for constant-weight ops (CPU targets; weights still bound as constants):
    convolutional regions in NCHW[x]c (``passes.blocked_layout``), matmul weights in column panels
    (``passes.pack_dense``); ``winograd``: stride-1 3x3 convs as Winograd F(m, 3) where it pays
    (``schedules/cpu/winograd.use_winograd``). ``compile`` and the tuner's task extraction both run
    it, so tuned workloads are the ones compile builds."""
    if target.is_gpu:
        return mod
    from .passes.blocked_layout import BlockedLayout
    from .passes.fold_batch_norm import FoldBatchNorm
    from .passes.pack_dense import PackDenseWeights

    # Batch-norm into the conv weights while they are constants: after the weights are lifted,
    # DecomposeOpsForInference leaves subtract/divide/multiply/add on runtime parameters in every
    # conv's epilogue (measured on AVX-512: EfficientNet-B0 -9 %, MobileNetV2 -6 %, ResNets ~1 %).
    mod = FoldBatchNorm(mod)
    if blocked_layout:
        layout = BlockedLayout(target.conv_block, winograd)
        mod = layout(mod)
        if layout.converted and log:
            wino = f", {layout.winograd_convs} of them as Winograd F(m, 3)" if layout.winograd_convs else ""
            log(f"{layout.converted} convolutions in the blocked layout NCHW{target.conv_block}c{wino}")
    if pack_weights:
        pack = PackDenseWeights(target.dense_panels)
        mod = pack(mod)
        if pack.packed and log:
            log(f"{pack.packed} matmul weights packed in column panels of {'/'.join(map(str, target.dense_panels))}")
    return mod


def finalize_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """Fold layout ops on constant weights, then lift the weights out as parameters."""
    mod = FoldWeightLayout(mod)
    return lift_constants(mod)


def _database(database: str | Path | None, target: Target | None = None):
    if database is None:
        return contextlib.nullcontext()
    from .records.validate import open_database

    return open_database(database, target)


def lower(mod: tvm.IRModule, target: Target, fast_math: bool = True) -> tvm.IRModule:
    """Decompose, (on CPUs) attention onto hwcomp's fused kernel, other softmaxes onto its row
    softmax and transcendental ops onto approximations, legalize and fuse: the PrimFuncs that get
    scheduled, tuned and built. Call inside ``target.tvm_target()``."""
    mod = relax.transform.DecomposeOpsForInference()(mod)
    if not target.is_gpu:
        from .passes.elementwise_before_reshape import ElementwiseBeforeReshape
        from .passes.fuse_attention import FuseAttention
        from .passes.row_softmax import RowSoftmax

        mod = FuseAttention(target.vector_bits, target.vector_registers, fast_exp=fast_math)(mod)
        mod = RowSoftmax(2 * target.vector_bits // 32, fast_exp=fast_math)(mod)
        # after the attention patterns are matched, before FastMath turns GELU into a call_tir
        mod = ElementwiseBeforeReshape()(mod)
    if fast_math and not target.is_gpu:
        mod = FastMath()(mod)
    return relax.get_pipeline("zero")(mod)


def schedule(mod: tvm.IRModule, target: Target, database: str | Path | None = None,
             fast_math: bool = True) -> tvm.IRModule:
    """Lower, fuse and schedule every PrimFunc (tuned records first, default rules after)."""
    from tvm.s_tir import dlight as dl

    if database is not None:  # without the records the tuner found hwcomp's own schedule beats
        from .records.served import served_database

        database = served_database(database)
    tvm_target = target.tvm_target()
    with tvm_target, _database(database, target):
        mod = lower(mod, target, fast_math)
        if not target.is_gpu:
            from hwcomp.schedules.cpu import default_rules

            from .records.knobs import stored_knob_rules

            rules = stored_knob_rules(database, target) + default_rules(target.cpu_caps)
            mod = dl.ApplyDefaultSchedule(*rules)(mod)
        else:
            mod = dl.ApplyDefaultSchedule(
                dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
            )(mod)
    return mod


def tir_pipeline(target: Target) -> str:
    """TVM's TIR pipeline for ``target``: on CPUs with small per-task buffers on the stack
    (``hwcomp.tir_stack``), else TVM's default."""
    from .tir_stack import pipeline_for

    return pipeline_for(target.tvm["kind"]) or "default"


def compile_module(mod: tvm.IRModule, target: Target):
    """``tvm.compile`` a scheduled module; returns the VM executable."""
    try:
        with cuda.compile_callback(target) if target.is_gpu else contextlib.nullcontext():
            return tvm.compile(mod, target=target.tvm_target(), tir_pipeline=tir_pipeline(target))
    except Exception as e:  # TVM's own errors are long C++ traces: keep the head
        head = "\n".join(str(e).strip().splitlines()[-6:])
        raise HwcompError(f"building for target {target.name!r} failed:\n{head}") from e


def export_library(executable, path: str | Path, target: Target) -> None:
    """Write the shared library, cross-compiling when the target is another architecture."""
    kwargs = {}
    if target.cross_compiler:
        from tvm.support import cc

        kwargs["fcompile"] = cc.cross_compiler(target.cross_compiler)
    if target.is_gpu:  # embed nvcc-compiled fatbins, not CUDA source (see hwcomp/cuda.py)
        kwargs["fpack_imports"] = cuda.pack_imports(target)
    executable.export_library(str(path), **kwargs)
