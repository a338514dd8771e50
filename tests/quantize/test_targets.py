"""Per-target int8 kernels: VNNI and CUDA must compile here, ARM cross-compiles and runs on the
emulated board (one test, marked ``board``)."""

from __future__ import annotations

import gc
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm

from hwcomp.quantize import int8_compute as K
from hwcomp.quantize import qmath
from hwcomp.target import get_target


def _dense(target_name: str, m=16, k=64, n=64, a_dtype="int8", epi=None):
    tgt = get_target(target_name)
    prov = K.get_provider(tgt)
    layout = prov.dense_layout(m, k, n)
    epi = epi or K.Epilogue("requant", None, "int8")
    func = prov.schedule_dense(K.dense_func(m, k, n, a_dtype, layout, epi), layout, m, k, n)
    return tgt, prov, layout, func


def test_vnni_compiles_and_emits_vpdpbusd():
    tgt, prov, layout, func = _dense("x86-avx512-vnni", a_dtype="uint8")
    assert prov.name == "x86-vnni" and prov.act_dtypes == ("uint8",)
    assert layout == "vnni" and K.weight_shape(layout, 64, 64) == (4, 16, 16, 4)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=tgt.tvm_target())
    asm = ex.mod.inspect_source("asm")
    assert re.search(r"\bvpdpbusd\b", asm), "no vpdpbusd in the VNNI kernel"
    # registered under hwcomp's own name (importing tvm.s_tir.tensor_intrin, which holds TVM's
    # broken dot_16x4_vnni, takes ~100 s here: hwcomp never imports it)
    from tvm.s_tir import TensorIntrin

    assert "vpdpbusd.512" in TensorIntrin.get("hwcomp_x86_vnni_u8s8s32_16x4").impl.script()


def test_vnni_packing_layout():
    w = np.arange(32 * 8, dtype=np.int64).reshape(32, 8).astype(np.int8)
    p = K.pack_weight(w, "vnni")
    assert p.shape == (2, 2, 16, 4)
    assert p[1, 1, 3, 2] == w[16 + 3, 4 + 2]


def test_cuda_dp4a_kernel_compiles_for_h100():
    tgt, prov, layout, func = _dense("h100", m=64, k=128, n=96, epi=K.Epilogue("float", "gelu"))
    assert prov.name == "cuda-dp4a" and func is not None
    ex = tvm.compile(tvm.IRModule({"main": func}), target=tgt.tvm_target())
    src = ex.mod.imports[0].inspect_source()
    assert "__dp4a(" in src and "__shared__" in src


@pytest.mark.parametrize("name,instr", [("rpi5", "sdot"), ("rpi4", "smull")])
def test_arm_kernels_cross_compile(name, instr):
    tgt, prov, layout, func = _dense(name)
    assert layout == "sdot"
    ex = tvm.compile(tvm.IRModule({"main": func}), target=tgt.tvm_target())
    asm = ex.mod.inspect_source("asm")
    assert re.search(rf"\b{instr}\b", asm), f"no {instr} for {name}"
    if name == "rpi4":
        assert not re.search(r"\bsdot\b", asm)


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(32, 64)
        self.fc2 = torch.nn.Linear(64, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.board
def test_int8_mlp_runs_on_emulated_rpi5(tmp_path):
    """Quantize on the host (calibration runs here), cross-compile with sdot, run over RPC."""
    from hwcomp.runtime.board import board_available, board_down, board_up
    from hwcomp.runtime.rpc import upload_library

    board_root = Path(__file__).resolve().parents[2] / ".board" / "aarch64"  # shared with tests/runtime

    ok, reason = board_available()
    if not ok:
        pytest.skip(reason)
    import hwcomp
    from hwcomp.quantize import QuantConfig, quantize_passes

    torch.manual_seed(0)
    model = _MLP().eval()
    x = torch.randn(4, 32)
    calib = [[np.random.default_rng(i).standard_normal((4, 32)).astype(np.float32)] for i in range(6)]
    passes = quantize_passes(get_target("rpi5"), QuantConfig(), calib, progress=False)
    art = hwcomp.compile(model, "rpi5", tmp_path / "art", example_inputs=(x,),
                         options=hwcomp.CompileOptions(passes=passes, use_default_database=False))
    assert "not_measured" in art.fidelity  # aarch64 library: not run here
    board = board_up(board_root)
    try:
        from tvm import relax

        remote = board.connect(session_timeout=120)
        dev = remote.cpu()
        vm = relax.VirtualMachine(upload_library(remote, art.path / "model.so", board.arch), dev)
        args = [tvm.runtime.tensor(x.numpy(), dev)] + [tvm.runtime.tensor(w, dev) for w in art.weights()]
        out = vm["main"](*args).numpy()
    finally:
        if not board.reused:
            board_down(board_root)
    with torch.no_grad():
        ref = model(x).numpy()
    assert qmath.cosine(out, ref) > 0.999


class _SmallCNN(torch.nn.Module):
    """Stem conv-bn-relu + max-pool, a residual block, a MobileNet-style depthwise + ReLU6 pair and a
    1x1 head: every int8 conv path (blocked hand-offs, float outputs into an add, depthwise)."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                nn.ReLU6())
        self.head = nn.Conv2d(16, 24, 1)

    def forward(self, x):
        y = self.stem(x)
        y = torch.relu(self.b(self.a(y)) + y)
        return self.head(self.dw(y))


@pytest.mark.board
@pytest.mark.parametrize("name", ["rpi4", "rpi5"])
def test_int8_cnn_runs_on_emulated_board(tmp_path, name):
    """A small int8 CNN (blocked int8 convs, NEON on rpi4, sdot on rpi5) quantized on the host and
    run over RPC: close to PyTorch fp32 (cosine > 0.99) and to the same model compiled for the host."""
    from hwcomp.models import randomize_batchnorm
    from hwcomp.runtime.board import board_available, board_down, board_up
    from hwcomp.runtime.rpc import upload_library

    board_root = Path(__file__).resolve().parents[2] / ".board" / "aarch64"  # shared with tests/runtime
    ok, reason = board_available()
    if not ok:
        pytest.skip(reason)
    import hwcomp
    from hwcomp.quantize import QuantConfig, quantize_passes

    torch.manual_seed(0)
    model = randomize_batchnorm(_SmallCNN(), seed=1).eval()
    x = torch.randn(1, 3, 16, 16)
    calib = [[np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32)] for i in range(6)]
    arts = {}
    for tgt in (name, "host"):
        passes = quantize_passes(get_target(tgt), QuantConfig(), calib, progress=False)
        arts[tgt] = hwcomp.compile(model, tgt, tmp_path / tgt, example_inputs=(x,),
                                   options=hwcomp.CompileOptions(passes=passes, use_default_database=False))
    board = board_up(board_root)
    try:
        from tvm import relax

        remote = board.connect(session_timeout=120)
        dev = remote.cpu()
        art = arts[name]
        vm = relax.VirtualMachine(upload_library(remote, art.path / "model.so", board.arch), dev)
        args = [tvm.runtime.tensor(x.numpy(), dev)] + [tvm.runtime.tensor(w, dev) for w in art.weights()]
        out = vm["main"](*args).numpy()
        del vm, args, remote
        gc.collect()  # close the session now: the board's server serves one at a time
    finally:
        if not board.reused:
            board_down(board_root)
    with torch.no_grad():
        ref = model(x).numpy()
    assert qmath.cosine(out, ref) > 0.99, qmath.cosine(out, ref)
    assert qmath.cosine(out, arts["host"].run([x.numpy()])[0]) > 0.99


AMX_DENSE = [(16, 64, 64), (196, 96, 384), (49, 768, 3072), (32, 48, 32), (7, 1536, 16), (197, 64, 64)]


@pytest.mark.parametrize("m,k,n", AMX_DENSE)
@pytest.mark.parametrize("epi", [K.Epilogue("float", "relu"), K.Epilogue("requant_f32", None, "uint8", 0.05, 3)])
def test_amx_dense_exact_on_host(m, k, n, epi):
    """On an AMX host the VNNI-layout int8 dense runs on the tile unit (K steps of 64, 32 or 16
    bytes; 14- and 7-row tiles at 196 and 49 rows), exactly the integer product before the epilogue;
    where no row tile divides M (197) the VNNI kernel, just as exact."""
    from hwcomp.schedules.x86.amx import dense_tiles

    tgt = get_target("host")
    prov = K.get_provider(tgt)
    if not getattr(prov, "amx", False):
        pytest.skip("this host has no AMX (or LLVM cannot emit it)")
    layout = prov.dense_layout(m, k, n)
    assert layout == "vnni"
    func = prov.schedule_dense(K.dense_func(m, k, n, "uint8", layout, epi), layout, m, k, n)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=tgt.tvm_target())
    assert bool(re.search(r"\btdpbusd\b", ex.mod.inspect_source("asm"))) == (dense_tiles(m, n, k) is not None)
    rng = np.random.default_rng(m + k + n)
    a = rng.integers(0, 256, (m, k)).astype(np.uint8)
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, n).astype(np.int32)
    acc = a.astype(np.int64) @ w.astype(np.int64).T + bias
    scale = (rng.uniform(0.5, 1.0, n) * 200 / np.abs(acc).max()).astype(np.float32)  # codes spread over 0..255
    out = tvm.runtime.tensor(np.zeros((m, n), epi.out_dtype))
    ex["main"](*(tvm.runtime.tensor(v) for v in (a, K.pack_weight(w, layout), bias, scale)), out)
    y = out.numpy()
    if epi.kind == "float":
        np.testing.assert_allclose(y, np.maximum(acc * scale.astype(np.float64), 0), rtol=2e-6, atol=0)
    else:  # float32 requantize: within one code of the float64 reference (LLVM may contract)
        ref = np.clip(np.round(acc * scale.astype(np.float64)) + 3, 0, 255)
        assert len(np.unique(ref)) > 32, "degenerate reference"
        assert np.abs(y.astype(np.int64) - ref).max() <= 1


def test_amx_dense_cross_compiles():
    tgt, _, layout, func = _dense("x86-amx", m=32, k=128, n=64, a_dtype="uint8")
    asm = tvm.compile(tvm.IRModule({"main": func}), target=tgt.tvm_target()).mod.inspect_source("asm")
    assert layout == "vnni" and re.search(r"\btdpbusd\b", asm) and re.search(r"\bldtilecfg\b", asm)
