"""Model zoo: every architecture in ``hwcomp.zoo`` at its realistic size, compiled for the host,
run, and compared with PyTorch eager on the same inputs (cosine, max abs error / max |output|).

    python bench/zoo.py --compile-only [--size realistic|tiny] [--only resnet18,gpt2] [--repeat 10]

Without ``--compile-only`` it also times hwcomp (untuned, TVM's time evaluator) and PyTorch eager.
One line per model, then ``zoo_correct=<k>/<n>`` last. Writes ``bench/results/zoo_compile.json``
(``zoo.json`` with timings). A model is correct when cosine >= 0.999 and max abs error <= 1e-3 x
max |output| (fp32, untuned schedules, fast math on).
"""

from __future__ import annotations

import argparse
import gc
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

import hwcomp  # noqa: E402
from hwcomp import zoo  # noqa: E402

COS_MIN = 0.999
REL_ERR_MAX = 1e-3


def compare(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(cosine, max abs error / max |ref|) in float64."""
    a, b = out.ravel().astype(np.float64), ref.ravel().astype(np.float64)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return cos, float(np.abs(a - b).max() / np.abs(b).max())


def run_one(name: str, size: str, workdir: Path, timing: bool, repeat: int) -> dict:
    row: dict = {"model": name, "size": size}
    t0 = time.perf_counter()
    model = zoo.build(name, size)
    row["params_m"] = model.n_params / 1e6
    row["inputs"] = [list(x.shape) for x in model.inputs]
    ref = model.reference()
    row["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    art = hwcomp.compile(model.module, "host", workdir / name, example_inputs=model.inputs,
                         options=hwcomp.CompileOptions(use_default_database=False, verify=False))
    row["compile_s"] = time.perf_counter() - t0
    inputs = [x.numpy() for x in model.inputs]
    t0 = time.perf_counter()
    out = art.run(inputs)[0]
    row["first_run_s"] = time.perf_counter() - t0
    row["cosine"], row["max_rel_err"] = compare(out, ref)
    row["correct"] = bool(row["cosine"] >= COS_MIN and row["max_rel_err"] <= REL_ERR_MAX)
    if timing:
        from hwcomp.runtime.measure import time_callable, time_vm

        row["hwcomp_ms"] = time_vm(art.vm(), art.device(), art.device_args(inputs), number=1, repeat=repeat).median
        with torch.no_grad():
            row["torch_ms"] = time_callable(lambda: model.module(*model.inputs), number=1, repeat=repeat).median
    return row


def line(row: dict) -> str:
    if "error" in row:
        return f"{row['model']:<22} FAIL  {row['error']}"
    s = (f"{row['model']:<22} {row['params_m']:7.1f}M  compile {row['compile_s']:6.1f}s  "
         f"cos {row['cosine']:.6f}  max_rel_err {row['max_rel_err']:.1e}  {'OK' if row['correct'] else 'WRONG'}")
    if "hwcomp_ms" in row:
        s += f"  hwcomp {row['hwcomp_ms']:.2f} ms  torch {row['torch_ms']:.2f} ms"
    return s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compile-only", action="store_true", help="compile, run once and compare; no timing")
    p.add_argument("--size", choices=["realistic", "tiny"], default="realistic")
    p.add_argument("--only", help="comma-separated architecture names (default: all)")
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    names = args.only.split(",") if args.only else list(zoo.ARCHITECTURES)

    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="hwcomp-zoo-"))
    try:
        for name in names:
            t0 = time.perf_counter()
            try:
                row = run_one(name, args.size, workdir, not args.compile_only, args.repeat)
            except Exception as e:  # one model's failure is a result, not the end of the run
                head = (str(e).strip().splitlines() or [""])[0][:300]
                row = {"model": name, "size": args.size, "error": f"{type(e).__name__}: {head}",
                       "traceback": traceback.format_exc(limit=-6), "correct": False}
            row["total_s"] = time.perf_counter() - t0
            rows.append(row)
            print(line(row), flush=True)
            shutil.rmtree(workdir / name, ignore_errors=True)
            gc.collect()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    correct = sum(r["correct"] for r in rows)
    write_results("zoo_compile" if args.compile_only else "zoo",
                  {"machine": platform.processor() or platform.machine(), "size": args.size,
                   "criteria": {"cosine_min": COS_MIN, "max_rel_err_max": REL_ERR_MAX},
                   "models": rows, "correct": correct, "total": len(rows)})
    print(f"zoo_correct={correct}/{len(rows)}")


if __name__ == "__main__":
    main()
