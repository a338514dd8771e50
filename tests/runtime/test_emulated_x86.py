"""The ``x86-avx2`` target's artifacts on a CPU without AVX-512: an emulated AMD Zen 3 (qemu-user,
``-cpu EPYC-Milan``: AVX2 + FMA, no AVX-512, no VNNI).

The CPUs these tests usually run on have AVX-512, so a stray AVX-512 instruction in an AVX2 build
(LLVM taking the host's features, an intrinsic of the wrong width) would pass every native test and
fault on the AVX2 CPU the target stands for. Under the emulator it faults here; and where it runs,
its outputs must equal the native run's bit for bit (the same machine code, the same arithmetic).
The AVX-512 build of the same model must fault there: the check can fail. Skipped where
``qemu-x86_64`` is missing or this is not an x86-64 host.
"""

from __future__ import annotations

import platform
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import hwcomp
from hwcomp.models import SmallCNN, randomize_batchnorm
from hwcomp.quantize import QuantConfig
from hwcomp.quantize.pipeline import Int8Quantizer
from hwcomp.runtime.emulated_x86 import artifact_command, qemu_x86, run_emulated
from hwcomp.target import get_target

pytestmark = pytest.mark.skipif(qemu_x86() is None or platform.machine() != "x86_64",
                                reason="needs qemu-x86_64 (qemu-user-static) on an x86-64 host")


def _run_emulated(art, x: np.ndarray, tmp_path: Path) -> subprocess.CompletedProcess:
    src, out = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(src, **{art.manifest["inputs"][0]["name"]: x})
    return run_emulated(artifact_command(art.path, src, out))


def _build(target: str, int8: bool, tmp_path: Path):
    from hwcomp.frontend import load_model

    torch.manual_seed(0)
    model = randomize_batchnorm(SmallCNN(width=16)).eval()
    rng = np.random.default_rng(0)
    imported = load_model(model, (torch.randn(1, 3, 32, 32),))
    passes = []
    if int8:
        calib = [[rng.standard_normal((1, 3, 32, 32)).astype(np.float32)] for _ in range(4)]
        passes = Int8Quantizer(get_target(target), QuantConfig(), calib, params=imported.params,
                               progress=False).passes()
    return hwcomp.compile(imported, target, tmp_path / f"{target}_{'int8' if int8 else 'fp32'}",
                          options=hwcomp.CompileOptions(passes=passes, use_default_database=False,
                                                        compression_summary=None))


def test_emulated_cpu_has_no_avx512():
    """The emulated CPU is what this file relies on: AVX2 and FMA, no AVX-512 (numpy's own CPU
    dispatch reads CPUID there)."""
    probe = ("try:\n    from numpy._core._multiarray_umath import __cpu_features__ as f\n"
             "except ImportError:  # numpy 1.x\n    from numpy.core._multiarray_umath import __cpu_features__ as f\n"
             "print(f['AVX2'], f['FMA3'], f['AVX512F'])")
    r = run_emulated([sys.executable, "-c", probe])
    assert r.returncode == 0, r.stderr[-400:]
    assert r.stdout.split() == ["True", "True", "False"], r.stdout


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_avx2_artifact_runs_bit_for_bit_without_avx512(tmp_path, int8):
    """fp32 (blocked NCHW16c convs) and int8 (``vpmaddubsw`` convs, 7-bit weights) builds for
    ``x86-avx2`` give, on the emulated Zen 3, exactly their native outputs."""
    art = _build("x86-avx2", int8, tmp_path)
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    r = _run_emulated(art, x, tmp_path)
    assert r.returncode == 0, r.stderr[-400:]
    with np.load(tmp_path / "out.npz") as z:
        emulated = z[z.files[0]]
    np.testing.assert_array_equal(emulated, art.run([x])[0])


def test_avx512_artifact_faults_on_the_avx2_cpu(tmp_path):
    """The control: the same model built for ``x86-avx512`` (zmm convs) dies there of SIGILL."""
    art = _build("x86-avx512", False, tmp_path)
    r = _run_emulated(art, np.zeros((1, 3, 32, 32), np.float32), tmp_path)
    assert r.returncode == -signal.SIGILL, (r.returncode, r.stderr[-400:])
    assert not (tmp_path / "out.npz").exists()
