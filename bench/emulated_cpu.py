"""Run the peers' int8 models (and hwcomp's artifact, as a check) on an emulated x86 CPU: qemu-user.

An int8 runtime picks its kernels from CPUID, and its arithmetic differs between CPUs: ONNX
Runtime's MLAS multiplies u8 x s8 with ``vpmaddubsw`` on AVX2, whose int16 pair sums saturate at
8-bit weights, and with ``vpdpbusd`` (exact) on VNNI. So on an AVX-512 VNNI host, a peer's int8
fidelity is its VNNI fidelity, not what it would give on the AVX2 CPU that ``--target x86-avx2``
stands for (OpenVINO's oneDNN keeps its fidelity on AVX2; ORT's drops, 0.987 -> 0.962 on ResNet-18). ``qemu-x86_64 -cpu EPYC-Milan`` runs the same Python, the same wheels and the same model
on an emulated AMD Zen 3 (AVX2 + FMA, no AVX-512, no VNNI), so the peer takes its AVX2 kernels and
does that CPU's arithmetic, exactly (timings under emulation mean nothing and are not taken).
hwcomp's own AVX2 artifact run the same way must give the native outputs bit for bit: the check
that the emulator executes these instructions as the CPU does.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from hwcomp.runtime.emulated_x86 import (
    AVX2_CPU,
    artifact_command,
    qemu_x86,
    run_emulated,
)

__all__ = ["AVX2_CPU", "hwcomp_outputs", "known_cpu", "ort_outputs", "ov_outputs", "qemu_x86"]
TIMEOUT_S = 1800  # per model; ResNet-50's four images take about a minute under emulation

_ORT_RUN = r"""
import sys, numpy as np, onnxruntime as ort
opts = ort.SessionOptions()
opts.intra_op_num_threads = int(sys.argv[4])
s = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
name = s.get_inputs()[0].name
with np.load(sys.argv[2]) as d:
    np.savez(sys.argv[3], *[s.run(None, {name: d[k]})[0] for k in d.files])
"""


_OV_RUN = r"""
import sys, numpy as np, openvino as ov
c = ov.Core().compile_model(sys.argv[1], "CPU", {"INFERENCE_NUM_THREADS": int(sys.argv[4]),
                                                 "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
r = c.create_infer_request()
outs = []
with np.load(sys.argv[2]) as d:
    for k in d.files:
        r.infer({0: d[k]})
        outs.append(np.array(r.get_output_tensor(0).data))
np.savez(sys.argv[3], *outs)
"""


def known_cpu(cpu: str) -> bool:
    """Whether this qemu has the CPU model ``cpu`` (``qemu-x86_64 -cpu help``)."""
    qemu = qemu_x86()
    if qemu is None:
        return False
    r = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, timeout=60, check=False)
    return any(ln.split()[1:2] == [cpu] for ln in r.stdout.splitlines() if ln.startswith("x86 "))


def _run(cmd: list[str], cpu: str, timeout: float) -> None:
    r = run_emulated(cmd, cpu, timeout)
    if r.returncode == -signal.SIGILL:
        raise RuntimeError(f"SIGILL on the emulated {cpu}: the code uses instructions that CPU lacks")
    if r.returncode != 0:
        tail = [ln for ln in r.stderr.splitlines() if ln.strip() and "TCG doesn't support" not in ln][-1:]
        raise RuntimeError(f"emulated run failed (rc {r.returncode}): {tail[0] if tail else ''}")


def _script_outputs(script: str, model: Path, images: list[np.ndarray], cpu: str, threads: int,
                    timeout: float) -> list[np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="hwcomp-emu-") as d:
        src, out = Path(d) / "in.npz", Path(d) / "out.npz"
        np.savez(src, *images)
        _run([sys.executable, "-c", script, str(model), str(src), str(out), str(threads)], cpu, timeout)
        with np.load(out) as z:
            return [z[k] for k in z.files]


def ort_outputs(onnx_path: Path, images: list[np.ndarray], cpu: str = AVX2_CPU, threads: int = 2,
                timeout: float = TIMEOUT_S) -> list[np.ndarray]:
    """ONNX Runtime's first output for each image, on the emulated ``cpu``."""
    return _script_outputs(_ORT_RUN, onnx_path, images, cpu, threads, timeout)


def ov_outputs(ir_path: Path, images: list[np.ndarray], cpu: str = AVX2_CPU, threads: int = 2,
               timeout: float = TIMEOUT_S) -> list[np.ndarray]:
    """OpenVINO's (CPU plugin, fp32 precision hint) first output for each image of an IR model
    (``.xml``), on the emulated ``cpu``."""
    return _script_outputs(_OV_RUN, ir_path, images, cpu, threads, timeout)


def hwcomp_outputs(artifact_dir: Path, input_name: str, images: list[np.ndarray], cpu: str = AVX2_CPU,
                   timeout: float = TIMEOUT_S) -> list[np.ndarray]:
    """An hwcomp artifact's first output for each image, on the emulated ``cpu`` (the TVM runtime
    alone, through the deploy bundles' ``run_model.py``)."""
    outs = []
    with tempfile.TemporaryDirectory(prefix="hwcomp-emu-") as d:
        for i, x in enumerate(images):
            src, out = Path(d) / f"in{i}.npz", Path(d) / f"out{i}.npz"
            np.savez(src, **{input_name: x})
            _run(artifact_command(artifact_dir, src, out), cpu, timeout)
            with np.load(out) as z:
                outs.append(z[z.files[0]])
    return outs
