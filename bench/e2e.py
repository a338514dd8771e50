"""End-to-end latency: hwcomp (untuned, and tuned when a database exists) vs PyTorch eager vs ONNX Runtime.

Models: an MLP, a small CNN, all-MiniLM-L6-v2 (real weights) and BERT-base (random init), seq 128,
batch 1, fp32, all measured side by side in one run on this machine. Writes bench/results/e2e.json.

    python bench/e2e.py [--models mlp,cnn,minilm,bert-base] [--repeat 10] [--db DIR]

Last line: ``e2e_bert_base_fp32_hwcomp_over_ort=<ratio>`` (lower is better).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ort_session, print_table, write_results  # noqa: E402

import hwcomp  # noqa: E402
from hwcomp.models import benchmark_model  # noqa: E402
from hwcomp.runtime.measure import time_callable, time_vm  # noqa: E402


def bench_model(name, model, inputs, args, workdir: Path) -> dict:

    row: dict = {"model": name}
    t0 = time.perf_counter()
    art = hwcomp.compile(model, "host", workdir / name, example_inputs=inputs,
                         options=hwcomp.CompileOptions(use_default_database=False))
    row["compile_s"] = time.perf_counter() - t0
    row["max_abs_err"] = art.fidelity["max_abs_err"]
    row["cosine"] = art.fidelity["min_cosine"]
    dev = art.device()
    tvm_args = art.device_args([x.numpy() for x in inputs])
    row["hwcomp_untuned_ms"] = time_vm(art.vm(), dev, tvm_args, number=args.number, repeat=args.repeat).median
    if args.db:
        tuned = hwcomp.compile(model, "host", workdir / f"{name}-tuned", example_inputs=inputs,
                               options=hwcomp.CompileOptions(database=args.db))
        targs = tuned.device_args([x.numpy() for x in inputs])
        row["hwcomp_tuned_ms"] = time_vm(tuned.vm(), dev, targs, number=args.number, repeat=args.repeat).median
    with torch.no_grad():
        row["torch_ms"] = time_callable(lambda: model(*inputs), number=args.number, repeat=args.repeat).median
    sess, feeds = ort_session(model, inputs, workdir / f"{name}.onnx")
    if sess is not None:
        row["ort_ms"] = time_callable(lambda: sess.run(None, feeds), number=args.number, repeat=args.repeat).median
    best = row.get("hwcomp_tuned_ms", row["hwcomp_untuned_ms"])
    row["hwcomp_over_torch"] = best / row["torch_ms"]
    if "ort_ms" in row:
        row["hwcomp_over_ort"] = best / row["ort_ms"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,cnn,minilm,bert-base")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--number", type=int, default=3)
    p.add_argument("--db", help="tuning database to add a tuned row")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    rows = []
    with tempfile.TemporaryDirectory(prefix="hwcomp-e2e-") as tmp:
        for name in args.models.split(","):
            model, inputs = benchmark_model(name)
            print(f"[{name}] compiling and measuring ...", flush=True)
            rows.append(bench_model(name, model, inputs, args, Path(tmp)))
    cols = ["model", "hwcomp_untuned_ms", "hwcomp_tuned_ms", "torch_ms", "ort_ms", "hwcomp_over_torch",
            "hwcomp_over_ort", "cosine", "compile_s"]
    print_table(rows, cols)
    write_results("e2e", {"machine": platform.processor() or platform.machine(), "rows": rows})
    bert = next((r for r in rows if r["model"] == "bert-base"), None)
    ratio = bert.get("hwcomp_over_ort", float("nan")) if bert else float("nan")
    print(f"e2e_bert_base_fp32_hwcomp_over_ort={ratio:.3f}")


if __name__ == "__main__":
    main()
