"""Measured arithmetic peaks of this CPU: fp32 FMA and int8 multiply-add, 1 and all threads.

The roofline every other benchmark is read against: ``bench/peak.c`` runs register-only loops of
``vfmadd`` (fp32, ymm and, where the CPU has AVX-512, zmm), ``vpmaddwd`` (s16 pairs, hwcomp's exact
AVX2 int8 path), ``vpmaddubsw`` + ``vpmaddwd`` (u8 x s8, the path ONNX Runtime's MLAS uses on AVX2)
and, where the CPU has AVX-512 VNNI, ``vpdpbusd`` (zmm); where it has AMX (and Linux grants the
tile data), ``tdpbusd`` on full 64-byte tiles (``int8_amx_gops``) and on the 16-byte ones hwcomp's
NCHW16c convolution issues (``int8_amx_k16_gops``); and hwcomp's AVX2 int8 conv step as its kernels
issue it, operands read from L1 (``int8_avx2_conv_gops``: two ``vpmaddubsw``, ``vpaddsw``, one
``vpmaddwd`` per 8 outputs x 8 bytes — the AVX2 roof of a blocked int8 conv, higher than the
register-only ``vpmaddubsw`` loop's on Zen 4). A multiply-add counts 2 ops everywhere (before
2026-12-05 the VNNI loop counted 1: its figures in older results are half the real peak).
``fp32_fma_gflops`` is the wider FMA's, ``int8_avx2_peak_gops`` the fastest AVX2 int8 sequence's,
``int8_peak_gops`` the fastest vector int8 sequence's (with the conv step since 2026-12-06: on
AVX2-only CPUs a matmul's "% of the int8 peak" in ``bench/int8.py`` reads lower than before)
(``int8_tile_peak_gops`` AMX's); an instruction set the CPU lacks reads null.
Needs gcc with AVX2 (x86-64 only).

    python bench/peak.py

Writes bench/results/peak.json. Last line: ``int8_over_fp32_peak=<ratio>``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402

SOURCE = Path(__file__).resolve().parent / "peak.c"


def measure_peaks(threads: int | None = None, iterations: int = 50_000_000, runs: int = 3) -> dict:
    """Run the peak loops with ``threads`` OpenMP threads (default: every CPU this process may use),
    best of ``runs`` (a peak is a best case; single runs on this shared machine vary by ~10 %)."""
    threads = threads or len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="hwcomp-peak-") as tmp:
        exe = Path(tmp) / "peak"
        subprocess.run(["gcc", "-O2", "-mavx2", "-mfma", "-fopenmp", str(SOURCE), "-o", str(exe)], check=True)
        res: dict = {}
        for _ in range(runs):
            out = subprocess.run([str(exe), str(iterations)], check=True, capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": str(threads)}).stdout
            for key, v in json.loads(out).items():
                res[key] = max(res.get(key, v), v)
    for key in ("fp32_fma512_gflops", "int8_vnni_gops", "int8_amx_gops", "int8_amx_k16_gops"):
        if res[key] < 0:
            res[key] = None
    res["fp32_fma_gflops"] = max(res["fp32_fma256_gflops"], res["fp32_fma512_gflops"] or 0)
    res["int8_avx2_peak_gops"] = max(res["int8_vpmaddwd_gops"], res["int8_vpmaddubsw_gops"], res["int8_avx2_conv_gops"])
    res["int8_peak_gops"] = max(res["int8_avx2_peak_gops"], res["int8_vnni_gops"] or 0)
    res["int8_tile_peak_gops"] = res["int8_amx_gops"]
    return res


def main() -> None:
    if platform.machine() != "x86_64":
        sys.exit("bench/peak.py measures x86-64 AVX2 peaks")
    rows = [measure_peaks(1), measure_peaks()]
    print_table(rows, ["threads", "fp32_fma256_gflops", "fp32_fma512_gflops", "int8_vpmaddwd_gops",
                       "int8_vpmaddubsw_gops", "int8_avx2_conv_gops", "int8_vnni_gops", "int8_amx_gops",
                       "int8_amx_k16_gops", "fp32_fma_gflops", "int8_avx2_peak_gops", "int8_peak_gops"])
    from peers import machine_info

    write_results("peak", {"machine": machine_info(rows[-1]["threads"]), "rows": rows})
    print(f"int8_over_fp32_peak={rows[-1]['int8_peak_gops'] / rows[-1]['fp32_fma_gflops']:.3f}")


if __name__ == "__main__":
    main()
