"""Small per-task buffers of CPU kernels on the stack, not in TVM's workspace pool.

TVM 0.27's ``LowerTVMBuiltin`` turns every constant allocation of 1 KiB or more into a
``TVMBackendAllocWorkspace`` / ``TVMBackendFreeWorkspace`` pair, wherever it is. A register tile's
accumulator buffer sits inside the parallel loop, so every task of a matmul or convolution called the
workspace pool twice (AVX-512's 8 x 48 matmul tile is 1.5 KiB, the 8-pixel x 32-channel conv tile
exactly 1 KiB), and the pool's free list shuffling showed as 2-5 % of a model's samples in ``perf``
(Swin-T: memmove 4 %, the pool 1.6 %). :func:`stack_small_workspaces` runs after ``LowerTVMBuiltin``
and gives such a buffer back to the stack (an ``alloca`` at the entry of the task's function) when it
is at most :data:`MAX_STACK_BYTES` and its free is in the same statement sequence.

``tvm.tirx.build`` takes its pipeline by name; :data:`PIPELINE` is TVM's default pipeline with this
pass after the host finalization, registered once under that name (:func:`register`).
"""

from __future__ import annotations

import threading

import tvm
import tvm_ffi
from tvm import tirx

#: Largest buffer moved to the stack: an attention task's score rows at 1500 tokens take 72 KiB
#: (Whisper's attention 1.04x faster off the pool). TVM's worker threads get glibc's default stack
#: (RLIMIT_STACK, 8 MiB on common Linux; 2 MiB when unlimited); a C library with 128 KiB thread
#: stacks (musl) would need this lowered.
MAX_STACK_BYTES = 96 * 1024
PIPELINE = "hwcomp_cpu"

_ALLOC = "tirx.TVMBackendAllocWorkspace"
_FREE = "tirx.TVMBackendFreeWorkspace"
_LOCK = threading.Lock()


def _op_name(expr) -> str | None:
    op = getattr(expr, "op", None)
    return getattr(op, "name", None)


def _small_workspace(stmt) -> bool:
    if not isinstance(stmt, tirx.DeclBuffer) or _op_name(stmt.data) != _ALLOC:
        return False
    nbytes = stmt.data.args[2]
    return isinstance(nbytes, tvm.tirx.IntImm) and 0 < int(nbytes.value) <= MAX_STACK_BYTES


def _data_of(expr):
    """The buffer var of ``buffer_data(buf)``, else None."""
    if _op_name(expr) == "tirx.buffer_data" and len(expr.args) == 1:
        return expr.args[0]
    return None


def _guard_of(stmt):
    """For the statements LowerTVMBuiltin puts around a workspace: ``("null", buf)`` for
    ``if isnullptr(buf.data): throw`` and ``("free", buf)`` for ``if free(buf.data) != 0: throw``."""
    if not isinstance(stmt, tirx.IfThenElse):
        return None
    cond = stmt.condition
    if _op_name(cond) == "tirx.isnullptr" and len(cond.args) == 1:
        buf = _data_of(cond.args[0])
        return ("null", buf) if buf is not None else None
    a = getattr(cond, "a", None)
    if isinstance(cond, tvm.tirx.NE) and _op_name(a) == _FREE and len(a.args) == 3:
        buf = _data_of(a.args[2])
        return ("free", buf) if buf is not None else None
    return None


def _rewrite_seq(seq):
    stmts = list(seq.seq)
    decls = [s.buffer for s in stmts if _small_workspace(s)]
    if not decls:
        return seq
    guards = [_guard_of(s) for s in stmts]
    freed = [b for b in decls if any(g and g[0] == "free" and g[1].same_as(b) for g in guards)]
    if not freed:
        return seq
    out = []
    for s, g in zip(stmts, guards):
        if _small_workspace(s) and any(s.buffer.same_as(b) for b in freed):
            out.append(tirx.AllocBuffer(s.buffer))
        elif g is not None and any(g[1].same_as(b) for b in freed):
            continue  # the null check and the free of a stack buffer
        else:
            out.append(s)
    return tirx.SeqStmt(out)


def stack_small_workspaces() -> tvm.transform.Pass:
    """Host-module pass, after ``LowerTVMBuiltin``: small constant workspaces → stack buffers."""

    @tvm.transform.module_pass(opt_level=0, name="hwcomp.StackSmallWorkspaces")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions.items():
            if isinstance(func, tirx.PrimFunc):
                body = tvm_ffi.structural_map(func.body, [(tirx.SeqStmt, _rewrite_seq)])
                if not body.same_as(func.body):
                    updates[gv] = func.with_body(body)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass


def _factory(**kwargs):
    pipeline, finalize_host, finalize_device = tvm.tirx.get_tir_pipeline("default", **kwargs)

    def host():
        return tvm.transform.Sequential([finalize_host(), stack_small_workspaces()])

    return pipeline, host, finalize_device


def register() -> str:
    """Register :data:`PIPELINE` with TVM (idempotent); returns its name for ``tvm.compile``."""
    from tvm.tirx import compilation_pipeline

    with _LOCK:
        if PIPELINE not in compilation_pipeline.PIPELINE_MAP:
            tvm.tirx.register_tir_pipeline(PIPELINE, _factory)
    return PIPELINE


def pipeline_for(kind: str) -> str | None:
    """The TIR pipeline to build a TVM target of ``kind`` with: :data:`PIPELINE` for ``llvm`` (CPU
    code), None (TVM's own choice) for anything else."""
    return register() if kind == "llvm" else None
