"""The per-target BSR kernels (``schedules/{cpu,x86,arm,cuda}/bsr.py``): x86 run here, AArch64 cross-built and
run under qemu-user when available, CUDA built only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm

from hwcomp.sparse_format.bsr import pack_bsr, random_block_sparse
from hwcomp.target import get_target

ROOT = Path(__file__).resolve().parents[2]
BOARD_ROOTFS = ROOT / ".board" / "aarch64" / "rootfs"


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---- x86 (host) kernel -----------------------------------------------------------------------


def _run_cpu(func, target, args):
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target())
    tens = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]
    ex.mod["main"](*tens)
    return tens[-1].numpy()


def _ref(x, w, bias=None, relu=False):
    y = x.astype(np.float64) @ w.T.astype(np.float64)
    if bias is not None:
        y = y + bias
    return np.maximum(y, 0) if relu else y


CASES = [
    # m, k, n, block, density, knobs (None = default), bias, activation
    (128, 96, 128, (8, 1), 0.1, None, True, "none"),
    (1, 64, 48, (8, 1), 0.3, None, True, "relu"),  # batch 1
    (19, 37, 29, (8, 1), 0.4, None, False, "none"),  # K, N not multiples of the block, M tail
    (33, 50, 40, (16, 1), 0.3, {"mt": 6, "m_outer": False, "rows_per_task": 1}, True, "relu"),
    (20, 31, 24, (4, 3), 0.3, {"mt": 5, "x_transposed": True}, True, "none"),  # K % c != 0
    (40, 48, 21, (1, 1), 0.2, None, False, "relu"),  # vectors along M
    (40, 48, 36, (4, 1), 0.2, {"mt": 16, "vector_axis": "m", "m_outer": False, "rows_per_task": 1}, True, "none"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}->{c[2]}_{c[3][0]}x{c[3][1]}")
def test_x86_kernel_matches_dense(case, host):
    from hwcomp.schedules.bsr_spec import BsrSpec
    from hwcomp.schedules.x86.bsr import BSRKnobs, bsr_kernel

    m, k, n, block, density, knobs, bias, act = case
    rng = _rng(hash(case[:3]) % 1000)
    w = random_block_sparse(n, k, block, density, rng)
    r = block[0]
    # Edge rows: the first block row empty, the second fully dense (when it exists).
    w[:r] = 0
    if n >= 2 * r:
        w[r : 2 * r] = rng.standard_normal((r, k))
    bsr = pack_bsr(w, block)
    assert bsr.indptr[1] == 0
    x = rng.standard_normal((m, k)).astype("float32")
    b = rng.standard_normal(n).astype("float32") if bias else None
    func = bsr_kernel(host, BsrSpec(m, k, n, block, bias=bias, activation=act), BSRKnobs(**knobs) if knobs else None)
    args = [x, bsr.data, bsr.indices, bsr.indptr] + ([b] if bias else []) + [np.zeros((m, n), "float32")]
    np.testing.assert_allclose(_run_cpu(func, host, args), _ref(x, w, b, act == "relu"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}->{c[2]}_{c[3][0]}x{c[3][1]}")
@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
def test_x86_int8_kernel_is_exact(case, x_dtype, host):
    """int8 BSR: integer accumulation is exact, so the result equals (x·Wᵀ + bias)·deq to float32 rounding."""
    from hwcomp.schedules.bsr_spec import BsrSpec
    from hwcomp.schedules.x86.bsr import BSRKnobs, bsr_kernel

    m, k, n, block, density, knobs, _, act = case
    rng = _rng(hash(case[:3]) % 1000 + 7)
    mask = random_block_sparse(n, k, block, density, rng) != 0
    w = (rng.integers(-127, 128, (n, k)) * mask).astype("int8")
    bsr = pack_bsr(w, block)
    lo, hi = (0, 256) if x_dtype == "uint8" else (-128, 128)
    x = rng.integers(lo, hi, (m, k)).astype(x_dtype)
    bias = rng.integers(-5000, 5000, n).astype("int32")
    deq = rng.uniform(1e-4, 1e-3, n).astype("float32")
    func = bsr_kernel(host, BsrSpec(m, k, n, block, activation=act, x_dtype=x_dtype),
                      BSRKnobs(**knobs) if knobs else None)
    out = _run_cpu(func, host, [x, bsr.data, bsr.indices, bsr.indptr, bias, deq, np.zeros((m, n), "float32")])
    acc = x.astype(np.int64) @ w.T.astype(np.int64) + bias
    ref = acc.astype(np.float32) * deq
    np.testing.assert_allclose(out, np.maximum(ref, 0) if act == "relu" else ref, rtol=1e-6, atol=1e-6)


def test_x86_knob_candidates_all_correct(host):
    from hwcomp.schedules.bsr_spec import BsrSpec
    from hwcomp.schedules.x86.bsr import bsr_kernel, knob_candidates

    m, k, n, block = 24, 40, 32, (16, 1)
    rng = _rng(3)
    w = random_block_sparse(n, k, block, 0.3, rng)
    bsr = pack_bsr(w, block)
    x = rng.standard_normal((m, k)).astype("float32")
    for knobs in knob_candidates(host.vector_bits, block, m)[:6]:
        out = _run_cpu(bsr_kernel(host, BsrSpec(m, k, n, block), knobs), host,
                       [x, bsr.data, bsr.indices, bsr.indptr, np.zeros((m, n), "float32")])
        np.testing.assert_allclose(out, _ref(x, w), rtol=1e-4, atol=1e-4, err_msg=str(knobs))


# ---- AArch64 ---------------------------------------------------------------------------------

_ARM_RUNNER = """
import sys, numpy as np
from tvm import runtime
a = np.load(sys.argv[1])
lib = runtime.load_module(sys.argv[2])
y = runtime.tensor(np.zeros(tuple(a["yshape"]), "float32"))
lib["main"](*[runtime.tensor(a[k]) for k in ("x", "data", "indices", "indptr", "bias")], y)
np.save(sys.argv[3], y.numpy())
"""


def test_arm_kernel_cross_compiles_and_runs_under_qemu(tmp_path):
    from hwcomp.schedules.arm.bsr import bsr_kernel
    from hwcomp.schedules.bsr_spec import BsrSpec

    target = get_target("rpi4")
    m, k, n, block = 9, 30, 22, target.sparse_block
    rng = _rng(5)
    w = random_block_sparse(n, k, block, 0.4, rng)
    bsr = pack_bsr(w, block)
    x = rng.standard_normal((m, k)).astype("float32")
    b = rng.standard_normal(n).astype("float32")
    spec = BsrSpec(m, k, n, block, bias=True, activation="relu")
    ex = tvm.compile(tvm.IRModule({"main": bsr_kernel(target, spec)}), target=target.tvm_target())
    asm = ex.mod.inspect_source("asm")
    assert "fmla" in asm  # NEON fused multiply-add
    if shutil.which(target.cross_compiler) is None:
        pytest.skip(f"{target.cross_compiler} not installed (apt-get install g++-aarch64-linux-gnu)")
    from tvm.support import cc

    lib = tmp_path / "bsr_arm.so"
    ex.mod.export_library(str(lib), fcompile=cc.cross_compiler(target.cross_compiler))
    assert lib.read_bytes()[18] == 0xB7  # ELF e_machine = EM_AARCH64
    site = BOARD_ROOTFS / "opt" / "tvm-site"
    if shutil.which("qemu-aarch64-static") is None or not (site / "tvm").is_dir():
        pytest.skip("qemu-aarch64-static or the aarch64 rootfs with TVM (.board/) is missing: left to board tests")
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=x, data=bsr.data, indices=bsr.indices, indptr=bsr.indptr, bias=b, yshape=np.array([m, n]))
    out = tmp_path / "out.npy"
    env = dict(os.environ, PYTHONPATH=str(site), TVM_USE_RUNTIME_LIB="1")
    proc = subprocess.run(
        ["qemu-aarch64-static", "-L", str(BOARD_ROOTFS), str(BOARD_ROOTFS / "usr/bin/python3"), "-c", _ARM_RUNNER,
         str(inputs), str(lib), str(out)],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(out), _ref(x, w, b, relu=True), rtol=1e-4, atol=1e-4)


# ---- CUDA ------------------------------------------------------------------------------------


def test_cuda_kernel_builds_for_h100():
    from hwcomp.schedules.bsr_spec import BsrSpec
    from hwcomp.schedules.cuda.bsr import CudaBSRKnobs, bsr_kernel

    target = get_target("h100")
    spec = BsrSpec(13, 37, 29, (16, 2), bias=True, activation="relu")
    func = bsr_kernel(target, spec, CudaBSRKnobs(ty=4, m_per_thread=2))
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target())
    cuda_mods = [m for m in ex.mod.imports if m.kind == "cuda"]
    assert cuda_mods, "no CUDA module generated"
    src = cuda_mods[0].inspect_source()
    assert "__global__" in src and "blockIdx.x" in src and "threadIdx.x" in src


@pytest.mark.gpu
def test_cuda_kernel_matches_dense_on_gpu():
    """Runs only where a CUDA GPU is present (skips here)."""
    dev = tvm.cuda(0)
    if not dev.exist:
        pytest.skip("no CUDA GPU")
    from hwcomp.schedules.bsr_spec import BsrSpec
    from hwcomp.schedules.cuda.bsr import bsr_kernel

    target = get_target("h100")
    m, k, n, block = 70, 100, 90, (16, 1)
    rng = _rng(7)
    w = random_block_sparse(n, k, block, 0.2, rng)
    bsr = pack_bsr(w, block)
    x = rng.standard_normal((m, k)).astype("float32")
    b = rng.standard_normal(n).astype("float32")
    ex = tvm.compile(tvm.IRModule({"main": bsr_kernel(target, BsrSpec(m, k, n, block, bias=True))}),
                     target=target.tvm_target())
    args = [tvm.runtime.tensor(a, dev) for a in (x, bsr.data, bsr.indices, bsr.indptr, b, np.zeros((m, n), "float32"))]
    ex.mod["main"](*args)
    np.testing.assert_allclose(args[-1].numpy(), _ref(x, w, b), rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
