"""Pooling (``WindowReduction``): max / average pooling in NCHW and in the blocked layout NCHW16c through
``hwcomp.compile`` against PyTorch, a uint8 / int8 blocked max-pool through Relax against NumPy, and the
rule's matching (it schedules the pools, and leaves convolutions, matmuls and global means alone).

Tolerance: max |out - ref| <= 1e-5 * max(|ref|) (max pooling is exact; averages are fp32 sums of at
most 9 terms; behind a convolution the convolution's own summation order dominates). Integer pools:
exact.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import tvm
from hwcomp.schedules.cpu import TiledReduction, WindowReduction, default_rules
from hwcomp.schedules.cpu.pool import WINDOW_ATTR
from numeric import assert_close_to_scale
from torch import nn
from torch.nn import functional as F
from tvm import relax, te, topi
from tvm.s_tir import dlight as dl

import hwcomp
from hwcomp.api import CompileOptions
from hwcomp.build import (
    bind_weights,
    compile_module,
    finalize_weights,
    layout_for_target,
    schedule,
)
from hwcomp.frontend import load_model

REL_TOL = 1e-5

POOLS = {
    "max3s2p1": lambda x: F.max_pool2d(x, 3, 2, 1),
    "max2s2": lambda x: F.max_pool2d(x, 2, 2),
    "max3s2_ceil": lambda x: F.max_pool2d(x, 3, 2, 0, ceil_mode=True),
    "avg3s2p1_excl": lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
    "avg2s2": lambda x: F.avg_pool2d(x, 2, 2),
    "adaptive1": lambda x: F.adaptive_avg_pool2d(x, 1),
}
# adaptive average pooling to 1x1 is a global mean: another rule's (not a sliding window)
WINDOWED = {k for k in POOLS if k != "adaptive1"}


class Pool(nn.Module):
    def __init__(self, kind: str, conv: bool):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(16, 32, 3, padding=1) if conv else None

    def forward(self, x):
        if self.conv is not None:
            x = torch.relu(self.conv(x))
        return POOLS[self.kind](x)


def _assert_close(out, ref):
    assert_close_to_scale(out, ref, REL_TOL)


def _pool_funcs(scheduled: tvm.IRModule) -> dict[str, str]:
    return {gv.name_hint: f.script() for gv, f in scheduled.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and "pool" in gv.name_hint}


# -- through hwcomp.compile, against PyTorch ---------------------------------------------------------


@pytest.mark.parametrize("kind", list(POOLS))
def test_pool_nchw(kind, tmp_path):
    torch.manual_seed(0)
    model = Pool(kind, conv=False).eval()
    shape = (1, 32, 27, 27) if "ceil" in kind else (1, 32, 28, 28)  # ceil_mode: a partial last window
    art = hwcomp.compile(model, "host", tmp_path / "art", example_inputs=(torch.randn(*shape),),
                         options=CompileOptions(use_default_database=False, blocked_layout=False))
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model(x).double().numpy()
    (out,) = art.run([x.numpy()])
    _assert_close(out, ref)


@pytest.mark.parametrize("kind", list(POOLS))
def test_pool_blocked(kind, tmp_path):
    """Behind a convolution the pool runs in NCHW16c (``BlockedLayout``; the adaptive pool as a mean)."""
    torch.manual_seed(1)
    model = Pool(kind, conv=True).eval()
    shape = (1, 16, 27, 27) if "ceil" in kind else (1, 16, 28, 28)
    logs: list[str] = []
    art = hwcomp.compile(model, "host", tmp_path / "art", example_inputs=(torch.randn(*shape),),
                         options=CompileOptions(use_default_database=False), log=logs.append)
    assert any(re.match(r"1 convolutions in the blocked layout", line) for line in logs), logs
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model(x).double().numpy()
    (out,) = art.run([x.numpy()])
    _assert_close(out, ref)


# -- the rule is the one applied ---------------------------------------------------------------------


def _schedule_torch(model, x, host, blocked: bool) -> tvm.IRModule:
    imp = load_model(model, (x,))
    mod = layout_for_target(bind_weights(imp.mod, imp.params), host, blocked_layout=blocked)
    mod, _ = finalize_weights(mod)
    return schedule(mod, host)


@pytest.mark.parametrize("blocked", [False, True], ids=["nchw", "nchw16c"])
@pytest.mark.parametrize("kind", sorted(WINDOWED))
def test_pool_scheduled_by_window_rule(kind, blocked, host):
    torch.manual_seed(2)
    model = Pool(kind, conv=blocked).eval()
    x = torch.randn(1, 16, 28, 28)
    funcs = _pool_funcs(_schedule_torch(model, x, host, blocked))
    assert funcs, "no pooling function in the lowered module"
    for name, text in funcs.items():
        assert WINDOW_ATTR in text, f"{name} not scheduled by WindowReduction"
        assert "T.parallel" in text and "T.vectorized" in text, name
        if blocked:
            assert f'T.int64({host.conv_block})), "float32")' in text, name  # blocked buffers: channel lanes
            # lane mode: the padding predicate is inlined into the loads, no padded copy is allocated
            assert "pad_temp" not in text, name


def test_nchw_stride2_reads_are_contiguous(host):
    """Row mode stages the rows a 3x3/2 window reads deinterleaved ([.., 2, W/2]), so the window's
    loads are unit-stride vectors rather than per-lane gathers."""
    func = _legalized_pool([1, 8, 32, 32], "float32", "NCHW")
    sch = WindowReduction(host.vector_bits, host.vector_registers).apply(func, host.tvm_target(), False)
    assert sch is not None
    text = sch.mod["main"].script()
    assert re.search(r"pad_temp = T\.sblock_alloc_buffer\(\(T\.int64\(1\), T\.int64\(8\), T\.int64\(34\), "
                     r"T\.int64\(2\), T\.int64\(17\)\)\)", text), text


@pytest.mark.parametrize("shape,layout", [([1, 8, 32, 32], "NCHW"), ([1, 2, 32, 32, 16], "NCHW16c")])
def test_per_thread_buffers_on_the_stack(shape, layout, host):
    """The accumulator tile and the staged rows live inside the parallel loop; TVM 0.27 gives such a
    buffer a TVMBackendAllocWorkspace call per iteration unless it is "global"-scoped and under 1 KiB."""
    func = _legalized_pool(shape, "float32", layout)
    sch = WindowReduction(host.vector_bits, host.vector_registers).apply(func, host.tvm_target(), False)
    mod = tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "pool")})
    ll = tvm.compile(mod, target=host.tvm_target()).jit().inspect_source("ll")
    assert "T.parallel" in sch.mod["main"].script()
    assert "ptr @__TVMBackendAllocWorkspace" not in ll


# -- integer pools through Relax ------------------------------------------------------------------------


def _pool_module(shape, dtype, layout="NCHW16c") -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.max_pool2d(x, pool_size=[3, 3], strides=[2, 2], padding=[1, 1, 1, 1],
                                               layout=layout))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _legalized_pool(shape, dtype, layout) -> tvm.tirx.PrimFunc:
    mod = relax.transform.LegalizeOps()(_pool_module(shape, dtype, layout))
    (func,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    return func


def _max_pool_ref(x: np.ndarray) -> np.ndarray:
    """3x3 stride-2 max pool with padding 1 over axes 2, 3 of a blocked [N, C/16, H, W, 16] array."""
    lo = np.iinfo(x.dtype).min
    p = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)], constant_values=lo)
    oh, ow = (x.shape[2] - 1) // 2 + 1, (x.shape[3] - 1) // 2 + 1
    out = np.full((*x.shape[:2], oh, ow, x.shape[4]), lo, x.dtype)
    for ry in range(3):
        for rx in range(3):
            out = np.maximum(out, p[:, :, ry:ry + 2 * oh:2, rx:rx + 2 * ow:2, :])
    return out


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_int_blocked_max_pool(dtype, host):
    shape = [1, 4, 56, 56, 16]
    scheduled = schedule(_pool_module(shape, dtype), host)
    funcs = _pool_funcs(scheduled)
    assert funcs and all(WINDOW_ATTR in t for t in funcs.values())
    vm = relax.VirtualMachine(compile_module(scheduled, host), tvm.cpu())
    info = np.iinfo(dtype)
    x = np.random.default_rng(3).integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    x[0, 0, :2, :2, :] = info.min  # a window touching the padding holding only minimal values
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, _max_pool_ref(x))


# -- what the rule must not take ------------------------------------------------------------------------


def _te_funcs():
    a = te.placeholder((1, 16, 28, 28), "float32", "a")
    w = te.placeholder((32, 16, 3, 3), "float32", "w")
    dw = te.placeholder((16, 1, 3, 3), "float32", "dw")
    m = te.placeholder((64, 128), "float32", "m")
    n = te.placeholder((128, 96), "float32", "n")
    k = te.reduce_axis((0, 128), "k")
    matmul = te.compute((64, 96), lambda i, j: te.sum(m[i, k] * n[k, j], axis=k), name="matmul")
    ry, rx = te.reduce_axis((0, 28), "ry"), te.reduce_axis((0, 28), "rx")
    mean = te.compute((1, 16, 1, 1), lambda b, c, i, j: te.sum(a[b, c, ry, rx] / 784.0, axis=[ry, rx]),
                      name="mean")
    return {
        "conv2d": te.create_prim_func([a, w, topi.nn.conv2d_nchw(a, w, 1, 1, 1)]),
        "depthwise": te.create_prim_func([a, dw, topi.nn.depthwise_conv2d_nchw(a, dw, 1, 1, 1)]),
        "matmul": te.create_prim_func([m, n, matmul]),
        "global_mean": te.create_prim_func([a, mean]),
        "row_sum": te.create_prim_func([m, topi.sum(m, axis=1)]),
    }


@pytest.mark.parametrize("name", ["conv2d", "depthwise", "matmul", "global_mean", "row_sum"])
def test_not_a_window_reduction(name, host):
    func = _te_funcs()[name]
    assert WindowReduction(host.vector_bits, host.vector_registers).apply(func, host.tvm_target(), False) is None
    if name != "row_sum":  # still scheduled by TiledReduction, as before
        assert TiledReduction(host.vector_bits).apply(func, host.tvm_target(), False) is not None


def test_rule_order(host):
    rules = [type(r).__name__ for r in default_rules(host.cpu_caps)]
    assert rules.index("WindowReduction") < rules.index("TiledReduction")
    func = _legalized_pool([1, 2, 14, 14, 16], "float32", "NCHW16c")
    with host.tvm_target():
        mod = dl.ApplyDefaultSchedule(*default_rules(host.cpu_caps))(tvm.IRModule({"main": func}))
    assert WINDOW_ATTR in mod["main"].script()
