"""CUDA artifacts: GPU code is compiled at build time (checked without a GPU), and runs on a GPU.

The build tests need nvcc (the CUDA toolkit), not a GPU. ``test_artifact_runs_on_gpu`` needs an
NVIDIA GPU and skips without one; it also runs in a runtime-only TVM (``TVM_USE_RUNTIME_LIB=1``, no
``libtvm_compiler.so``) on prebuilt artifacts: set ``HWCOMP_GPU_ARTIFACTS`` to a directory of them
(``bench/gpu_pack.sh`` makes ``.gpu/artifacts``).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from hwcomp import cuda
from hwcomp.errors import HwcompError


def _runtime_only() -> bool:
    from tvm import base

    return bool(base._RUNTIME_ONLY)


needs_compiler = pytest.mark.skipif(_runtime_only(), reason="TVM compiler not loaded (runtime-only TVM)")
needs_nvcc = pytest.mark.skipif(_runtime_only() or cuda.find_nvcc() is None,
                                reason="needs the TVM compiler and nvcc (CUDA toolkit) to build for CUDA")


def _mlp():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).eval()
    return model, torch.randn(4, 64)


def _cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    return model, torch.randn(1, 3, 16, 16)


# ---- the packed-module blob (no nvcc, no GPU) --------------------------------------------------
def _s(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def _fake_cuda_module(fmt: str, code: bytes) -> tuple[bytes, bytes]:
    fmap = struct.pack("<Q", 1) + _s(b"k0") + _s(b"k0") + struct.pack("<Q", 2) + b"\x03\x40\x01\x00" * 2
    fmap += struct.pack("<Q", 1) + _s(b"threadIdx.x") + struct.pack("<Q", 2) + b"\x00" * 8
    return _s(fmt.encode()) + fmap + _s(code), fmap


def _fake_blob(mods) -> bytes:
    # import tree as TVM writes it for VM executable -> _lib -> cuda: indptr [0, 1, 2, 2], children [1, 2]
    body = struct.pack("<Q", 4) + struct.pack("<4Q", 0, 1, 2, 2) + struct.pack("<Q", 2) + struct.pack("<2Q", 1, 2)
    for kind, data in mods:
        body += _s(kind.encode()) + (b"" if data is None else _s(data))
    return struct.pack("<Q", len(body)) + body


def test_blob_rewrite_replaces_source_by_fatbin():
    src = b'extern "C" __global__ void k0(float* a, float* b) {}\n'
    mod_bytes, fmap = _fake_cuda_module("cuda", src)
    blob = _fake_blob([("relax.VMExecutable", b"vm-bytes"), ("_lib", None), ("cuda", mod_bytes)])
    fake_fatbin = cuda.FATBIN_MAGIC + b"\x01\x00\x10\x00" + b"\x00" * 8
    seen = []
    new, report = cuda.compile_blob(blob, lambda code: seen.append(code) or fake_fatbin)
    assert seen == [src.decode()]
    assert report == [{"functions": ["k0"], "source_bytes": len(src), "fatbin_bytes": len(fake_fatbin)}]
    indptr, children, mods = cuda.parse_blob(new)
    assert (indptr, children) == ([0, 1, 2, 2], [1, 2])
    assert mods[:2] == [("relax.VMExecutable", b"vm-bytes"), ("_lib", None)]
    m = cuda.parse_cuda_module(mods[2][1])
    assert (m["fmt"], m["fmap"], m["code"], m["functions"]) == ("fatbin", fmap, fake_fatbin, ["k0"])
    # Already-binary modules are left alone.
    again, report = cuda.compile_blob(new, lambda code: pytest.fail("compiled twice"))
    assert again == new and report == []


def test_blob_with_unknown_layout_is_a_clear_error():
    with pytest.raises(HwcompError, match="unexpected layout"):
        cuda.compile_blob(b"\x05" + b"\x00" * 7 + b"junk!", lambda code: b"")


@needs_compiler
def test_compile_callback_is_restored():
    import tvm  # noqa: F401  (registers TVM's own callback)
    import tvm_ffi

    from hwcomp.target import get_target

    name = "tvm_callback_cuda_compile"
    before = tvm_ffi.get_global_func(name, allow_missing=True)
    with cuda.compile_callback(get_target("h100")):
        inside = tvm_ffi.get_global_func(name, allow_missing=True)
        assert inside is not None
        assert before is None or not inside.same_as(before)
    after = tvm_ffi.get_global_func(name, allow_missing=True)
    assert (after is None) == (before is None)
    if before is not None:
        assert after.same_as(before)


def test_nvcc_gencode_has_sass_and_ptx():
    from types import SimpleNamespace

    h100 = SimpleNamespace(name="h100", tvm={"kind": "cuda", "arch": "sm_90"})
    assert cuda.nvcc_gencode(h100) == [
        "-gencode", "arch=compute_90,code=sm_90", "-gencode", "arch=compute_90,code=compute_90"]
    with pytest.raises(HwcompError, match="CUDA arch"):
        cuda.nvcc_gencode(SimpleNamespace(name="x", tvm={"kind": "cuda"}))


# ---- compiling for CUDA targets here (nvcc, no GPU) --------------------------------------------
@needs_compiler
def test_stock_export_would_embed_source(tmp_path):
    """Without the hook TVM stores CUDA source: what the hook exists to replace (no nvcc needed)."""
    from hwcomp.build import bind_weights, compile_module, finalize_weights, schedule
    from hwcomp.frontend import load_model
    from hwcomp.target import get_target

    model, x = _mlp()
    imported = load_model(model, (x,))
    target = get_target("h100")
    mod, _ = finalize_weights(bind_weights(imported.mod, imported.params))
    ex = compile_module(schedule(mod, target), target)
    ex.export_library(str(tmp_path / "model.so"))
    mods = cuda.describe_library(tmp_path / "model.so")
    assert [m["fmt"] for m in mods] == ["cuda"] and mods[0]["is_source"]
    assert b"__global__" in (tmp_path / "model.so").read_bytes()


@pytest.fixture(scope="module")
def h100_mlp(tmp_path_factory):
    import hwcomp

    model, x = _mlp()
    out = tmp_path_factory.mktemp("cuda") / "mlp-h100"
    return hwcomp.compile(model, "h100", out, example_inputs=(x,)), model


@needs_nvcc
def test_h100_artifact_embeds_fatbin_not_source(h100_mlp):
    art, _ = h100_mlp
    lib = art.path / "model.so"
    mods = cuda.describe_library(lib, with_code=True)
    assert len(mods) == 1
    m = mods[0]
    assert m["fmt"] == "fatbin" and m["is_fatbin"] and not m["is_source"]
    assert m["code"].startswith(cuda.FATBIN_MAGIC)
    assert sorted(m["functions"]) == ["fused_matmul1_add1_kernel", "fused_matmul_add_relu_kernel"]
    assert {(e["kind"], e["arch"]) for e in m["fatbin_entries"]} == {("elf", "sm_90"), ("ptx", "sm_90")}
    data = lib.read_bytes()
    assert b"__global__" not in data and b"#include" not in data  # no CUDA source left in the library
    # The fatbin is stored whole in the library.
    assert m["code"] in data
    assert art.manifest["target"]["tvm"] == {"kind": "cuda", "arch": "sm_90"}


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("target,sm", [("a100", "sm_80"), ("h100", "sm_90")])
def test_cnn_builds_fatbin(tmp_path, target, sm):
    import hwcomp

    model, x = _cnn()
    art = hwcomp.compile(model, target, tmp_path / f"cnn-{target}", example_inputs=(x,))
    mods = cuda.describe_library(art.path / "model.so")
    assert mods and all(m["fmt"] == "fatbin" for m in mods)
    assert {(e["kind"], e["arch"]) for m in mods for e in m["fatbin_entries"]} == {("elf", sm), ("ptx", sm)}
    assert any("conv2d" in f for m in mods for f in m["functions"])


@needs_compiler
def test_missing_nvcc_is_a_clear_error(monkeypatch):
    from hwcomp.target import get_target

    monkeypatch.setattr(cuda, "find_nvcc", lambda: None)
    with pytest.raises(HwcompError, match="needs the CUDA compiler"):
        cuda.compile_fatbin("extern \"C\" __global__ void k() {}", get_target("h100"))


# ---- on a GPU ----------------------------------------------------------------------------------
def _gpu_or_skip():
    import tvm

    ok, why = cuda.load_cuda_runtime()
    if not ok:
        pytest.skip(f"no CUDA runtime: {why}")
    dev = tvm.cuda(0)
    if not dev.exist:
        pytest.skip("no CUDA GPU: tvm.cuda(0).exist is false")
    return dev


@pytest.mark.gpu
def test_artifact_runs_on_gpu(tmp_path):
    dev = _gpu_or_skip()
    from hwcomp.artifact import Artifact, compare

    prebuilt = os.environ.get("HWCOMP_GPU_ARTIFACTS")
    if prebuilt:
        dirs = sorted(p for p in Path(prebuilt).iterdir()
                      if (p / "manifest.json").is_file() and not p.name.startswith("control"))
        assert dirs, f"no artifacts under {prebuilt}"
    else:
        if cuda.find_nvcc() is None or _runtime_only():
            pytest.skip("HWCOMP_GPU_ARTIFACTS not set, and building here needs the TVM compiler and nvcc")
        import hwcomp

        major = int(dev.compute_version.split(".")[0])
        target = "h100" if major >= 9 else "a100" if major >= 8 else None
        if target is None:
            pytest.skip(f"GPU compute capability {dev.compute_version} is older than the shipped targets")
        model, x = _mlp()
        dirs = [hwcomp.compile(model, target, tmp_path / "mlp", example_inputs=(x,)).path]
    for d in dirs:
        art = Artifact.load(d)
        assert art.runs_here() == (True, "")
        ins, outs = art.reference()
        fid = compare(art.run(ins), outs)
        assert fid["max_abs_err"] < 1e-4 and fid["min_cosine"] > 0.99999, (d.name, fid)
        if not prebuilt:
            import torch

            with torch.no_grad():
                expected = model(torch.from_numpy(ins[0])).numpy()
            np.testing.assert_allclose(art.run(ins)[0], expected, atol=1e-4, rtol=1e-4)
