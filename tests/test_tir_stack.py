"""hwcomp.tir_stack: per-task buffers of 1 KiB and more on the stack instead of TVM's workspace pool.

Checked on the built code (no ``TVMBackendAllocWorkspace`` left for a small tile, still there for a
buffer above the cap) and on the numbers (the matmul against NumPy, tolerance 1e-4 relative).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hwcomp.schedules.cpu.dense import dense_packed
from hwcomp.schedules.cpu.rules import TiledReduction, TileKnobs
from tvm import te

from hwcomp import tir_stack


def _asm(ex) -> str:
    mod = ex.mod
    return mod.imports[0].inspect_source("asm") if mod.imports else mod.inspect_source("asm")


def _packed_matmul(host, m, k, n_panels, mr):
    panel = 3 * host.vector_bits // 32
    x = te.placeholder((m, k), name="x")
    wp = te.placeholder((n_panels, k, panel), name="w")
    func = te.create_prim_func([x, wp, dense_packed(x, wp)])
    sch = TiledReduction(host.vector_bits, TileKnobs(mr=mr, nr_vectors=3)).apply(func, host.tvm_target(), False)
    return sch.mod, panel


@pytest.mark.parametrize("pipeline", ["default", "stack"])
def test_small_tile_moves_to_the_stack(host, pipeline):
    """An 8 x 3-vector accumulator tile (768 B to 1.5 KiB) per task: TVM's default pipeline asks the
    workspace pool for it in every task; the hwcomp pipeline puts it on the stack, same results."""
    mod, panel = _packed_matmul(host, 64, 40, 2, mr=8)
    tile_bytes = 8 * panel * 4
    name = tir_stack.register() if pipeline == "stack" else "default"
    ex = tvm.compile(mod, target=host.tvm_target(), tir_pipeline=name)
    pooled = "TVMBackendAllocWorkspace" in _asm(ex)
    assert pooled == (pipeline == "default" and tile_bytes >= 1024)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 40)).astype("f4")
    w = rng.standard_normal((40, 2 * panel)).astype("f4")
    wp = np.ascontiguousarray(w.reshape(40, 2, panel).transpose(1, 0, 2))
    out = tvm.runtime.tensor(np.zeros((64, 2 * panel), "f4"))
    ex["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(wp), out)
    np.testing.assert_allclose(out.numpy(), x @ w, rtol=1e-4, atol=1e-4)


def test_large_buffer_stays_in_the_pool(host):
    """A per-task buffer above MAX_STACK_BYTES keeps its workspace allocation."""
    rows = tir_stack.MAX_STACK_BYTES // 4 // 16 + 8  # 16 floats per row: just over the cap
    f = tvm.script.from_source(f'''
@T.prim_func
def main(x: T.Buffer((4, {rows}, 16), "float32"), y: T.Buffer((4, 16), "float32")):
    T.func_attr({{"tirx.noalias": True}})
    for t in T.parallel(4):
        s = T.alloc_buffer(({rows}, 16), "float32")
        for i, j in T.grid({rows}, 16):
            s[i, j] = x[t, i, j] * T.float32(2.0)
        for j in range(16):
            y[t, j] = T.float32(0.0)
        for i, j in T.grid({rows}, 16):
            y[t, j] = y[t, j] + s[i, j]
''')
    ex = tvm.compile(tvm.IRModule({"main": f}), target=host.tvm_target(), tir_pipeline=tir_stack.register())
    assert "TVMBackendAllocWorkspace" in _asm(ex)
    xs = np.random.default_rng(1).standard_normal((4, rows, 16)).astype("f4")
    y = tvm.runtime.tensor(np.zeros((4, 16), "f4"))
    ex["main"](tvm.runtime.tensor(xs), y)
    np.testing.assert_allclose(y.numpy(), 2 * xs.sum(1), rtol=1e-4, atol=1e-3)


def test_register_is_idempotent():
    assert tir_stack.register() == tir_stack.register() == tir_stack.PIPELINE


def test_pipeline_for_cpu_code_only():
    assert tir_stack.pipeline_for("llvm") == tir_stack.PIPELINE
    assert tir_stack.pipeline_for("cuda") is None
