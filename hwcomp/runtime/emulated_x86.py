"""Commands on an emulated x86-64 CPU (qemu-user): an AVX2-only CPU on a machine with AVX-512.

``qemu-x86_64 -cpu EPYC-Milan`` runs this machine's own Python and libraries on an emulated AMD
Zen 3 (AVX2 + FMA, no AVX-512, no VNNI). Code that picks its kernels from CPUID (ONNX Runtime's
MLAS, oneDNN, numpy) then takes that CPU's, and code with an instruction the CPU lacks dies of
SIGILL. Used by ``bench/int8_cnn.py`` (the peers' int8 arithmetic on an AVX2 CPU) and by
``tests/runtime/test_emulated_x86.py`` (``x86-avx2`` builds hold no AVX-512). Emulated timings mean
nothing and are never taken.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from hwcomp.errors import HwcompError

#: qemu's CPU model for an AVX2 x86 CPU without AVX-512 (an AMD Zen 3)
AVX2_CPU = "EPYC-Milan"
STANDALONE_RUNNER = Path(__file__).resolve().parent / "standalone_runner.py"


def qemu_x86() -> str | None:
    """The qemu-user binary for x86-64, or None."""
    return shutil.which("qemu-x86_64") or shutil.which("qemu-x86_64-static")


def run_emulated(cmd: list[str], cpu: str = AVX2_CPU, timeout: float = 600) -> subprocess.CompletedProcess:
    """``cmd`` (its first item an x86-64 executable) on the emulated ``cpu``, output captured; a
    deadline of ``timeout`` seconds (``subprocess.TimeoutExpired`` past it)."""
    qemu = qemu_x86()
    if qemu is None:
        raise HwcompError("qemu-x86_64 not found (apt install qemu-user-static)")
    return subprocess.run([qemu, "-cpu", cpu, *cmd], check=False, capture_output=True, text=True, timeout=timeout)


def artifact_command(artifact_dir: Path, inputs: Path, output: Path) -> list[str]:
    """Run an hwcomp artifact once with the TVM runtime alone (the deploy bundles' ``run_model.py``)
    on ``inputs`` (an .npz by input name), writing its outputs to ``output``."""
    return [sys.executable, str(STANDALONE_RUNNER), "--dir", str(artifact_dir), "--inputs", str(inputs),
            "--output", str(output), "--repeat", "1"]
