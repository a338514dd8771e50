"""Block-sparse linear layers: hwcomp BSR kernels vs dense (hwcomp, oneDNN, MKL) and torch CSR; BERT-base.

1. ``y = x @ W.T + b`` with x 128×768, W 3072×768 (BERT's FFN up-projection) pruned to 50–95% with
   blocks 1x1 … 32x1 (r output rows × c input columns): the hwcomp BSR kernel (knobs tuned per block
   at 90% unless ``--quick``) vs hwcomp dense (default schedule), oneDNN fp32 (torch ``to_mkldnn``
   Linear), torch dense (MKL) and torch CSR (``torch.sparse.mm``).
2. BERT-base (random init, seq 128, batch 1) with every encoder linear block-pruned to 90% in torch,
   compiled by ``hwcomp.compile`` with the sparse passes (the pre-pruned weights are detected), vs ONNX
   Runtime fp32 on the dense model. Skipped with ``--quick``.

All in one run on this machine, every method timed the same way: the minimum over ``repeat`` means
of ``number`` calls (the machine may be shared, and other work only ever adds time; medians are kept
in the JSON as ``*_median_ms``). oneDNN is timed again next to every BSR measurement and the speedup
uses that adjacent timing (``onednn_adjacent_ms``); BERT and ONNX Runtime are timed alternately.
Writes ``bench/results/sparse.json`` and ``bench/results/sparse.png``.

    python bench/sparse.py [--quick] [--repeat 10]

Last line: ``sparse_linear_90pct_16x1_speedup_vs_onednn=<x>``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ort_session, print_table, write_results

import hwcomp
from hwcomp.build_measure import measure_bsr_ms
from hwcomp.passes.dense_to_bsr import bsr_primfunc
from hwcomp.runtime.measure import time_callable, time_vm
from hwcomp.sparse_format.bsr import block_prune, pack_bsr
from hwcomp.target import get_target

M, K, N = 128, 768, 3072
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
BLOCKS = ((1, 1), (4, 1), (8, 1), (16, 1), (32, 1))


def _time_ms(fn, number: int, repeat: int) -> tuple[float, float]:
    """(min, median) over ``repeat`` means of ``number`` calls, in ms."""
    st = time_callable(fn, number=number, repeat=repeat, warmup=2)
    return min(st.samples_ms), st.median


def _pruned_weight(sparsity: float, block, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return block_prune(rng.standard_normal((N, K)).astype("float32") * 0.05, sparsity, block)


def tune_block(target, block, log) -> object:
    """Best knobs of the BSR kernel for ``block`` at 90% (min over a small candidate set)."""
    from hwcomp.schedules.x86.bsr import knob_candidates

    w = pack_bsr(_pruned_weight(0.9, block), block)
    best = None
    for knobs in knob_candidates(target.vector_bits, block, M):
        ms = measure_bsr_ms(target, M, w, bias=True, knobs=knobs)
        if best is None or ms < best[0]:
            best = (ms, knobs)
    log(f"  tuned {block[0]}x{block[1]}: {best[1]} ({best[0]:.3f} ms)")
    return best[1]


def time_bsr(target, w: np.ndarray, block, knobs, x: np.ndarray, b: np.ndarray, number, repeat):
    """(min, median) latency of the hwcomp BSR kernel in ms and its max error vs NumPy."""
    import tvm
    from hwcomp.schedules.bsr_spec import BsrSpec

    bsr = pack_bsr(w, block)
    func = bsr_primfunc(target, BsrSpec(M, K, N, block, bias=True), knobs)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target())
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev)
            for a in (x, bsr.data, bsr.indices, bsr.indptr, b, np.zeros((M, N), "float32"))]
    ex.mod["main"](*args)
    err = float(np.abs(args[-1].numpy() - (x @ w.T + b)).max())
    res = ex.mod.time_evaluator("main", dev, number=number, repeat=repeat)(*args)
    return float(min(res.results)) * 1e3, float(np.median(res.results)) * 1e3, err


def time_hwcomp_dense(target, x, w, b, number, repeat) -> float:
    from tvm import relax

    from hwcomp.build import compile_module, schedule

    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((M, K), "float32"))
    wv = relax.Var("w", relax.TensorType((K, N), "float32"))
    bv = relax.Var("b", relax.TensorType((N,), "float32"))
    with bb.function("main", [xv, wv, bv]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(relax.op.matmul(xv, wv), bv))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    import tvm

    ex = compile_module(schedule(bb.get(), target), target)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    args = [tvm.runtime.tensor(a, dev) for a in (x, np.ascontiguousarray(w.T), b)]
    return min(time_vm(vm, dev, args, number=number, repeat=repeat).samples_ms)


def bench_linear(target, args, log) -> tuple[list[dict], dict]:
    sparsities = (0.7, 0.9) if args.quick else SPARSITIES
    blocks = ((8, 1), (16, 1)) if args.quick else BLOCKS
    rng = np.random.default_rng(1)
    x = rng.standard_normal((M, K)).astype("float32")
    b = rng.standard_normal(N).astype("float32")
    n, rep = args.number, args.repeat

    dense_w = rng.standard_normal((N, K)).astype("float32") * 0.05
    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(dense_w), torch.from_numpy(b)
    lin = torch.nn.Linear(K, N)
    with torch.no_grad():
        lin.weight.copy_(wt)
        lin.bias.copy_(bt)
    from torch.utils import mkldnn as torch_mkldnn

    baselines = {}
    with torch.no_grad():
        baselines["torch_dense_ms"], baselines["torch_dense_median_ms"] = _time_ms(
            lambda: torch.nn.functional.linear(xt, wt, bt), n, rep)
        mk = torch_mkldnn.to_mkldnn(copy.deepcopy(lin))
        xm = xt.to_mkldnn()
        baselines["onednn_dense_ms"], baselines["onednn_dense_median_ms"] = _time_ms(lambda: mk(xm), n, rep)
    log(f"  torch dense {baselines['torch_dense_ms']:.3f} ms, oneDNN {baselines['onednn_dense_ms']:.3f} ms")
    baselines["hwcomp_dense_ms"] = time_hwcomp_dense(target, x, dense_w, b, max(1, n // 5), max(3, rep // 2))
    log(f"  hwcomp dense (default schedule) {baselines['hwcomp_dense_ms']:.3f} ms")

    rows = []
    for block in blocks:
        knobs = None if args.quick else tune_block(target, block, log)
        for s in sparsities:
            w = _pruned_weight(s, block)
            bsr_ms, bsr_median, err = time_bsr(target, w, block, knobs, x, b, n, rep)
            csr = torch.from_numpy(w).to_sparse_csr()
            with torch.no_grad():
                csr_ms, _ = _time_ms(lambda csr=csr: torch.sparse.mm(csr, xt.t()).t() + bt, max(1, n // 5), rep)
            # Other work on this machine changes the speed over minutes: oneDNN is timed again right
            # after each kernel, and each ratio uses that adjacent measurement.
            with torch.no_grad():
                onednn_now, onednn_now_median = _time_ms(lambda: mk(xm), n, rep)
            row = {"block": f"{block[0]}x{block[1]}", "sparsity": s, "bsr_ms": bsr_ms, "torch_csr_ms": csr_ms,
                   "bsr_median_ms": bsr_median, **baselines, "onednn_adjacent_ms": onednn_now,
                   "onednn_adjacent_median_ms": onednn_now_median, "max_abs_err": err,
                   "knobs": None if knobs is None else knobs.to_dict()}
            row["speedup_vs_onednn"] = onednn_now / bsr_ms
            row["speedup_vs_torch_dense"] = baselines["torch_dense_ms"] / bsr_ms
            row["speedup_vs_hwcomp_dense"] = baselines["hwcomp_dense_ms"] / bsr_ms
            row["speedup_vs_csr"] = csr_ms / bsr_ms
            rows.append(row)
            log(f"  {row['block']:>5} {s:.2f}: bsr {bsr_ms:.3f} ms ({row['speedup_vs_onednn']:.2f}x oneDNN), "
                f"csr {csr_ms:.3f} ms, err {err:.1e}")
    return rows, baselines


def bench_bert(target, args, log, workdir: Path) -> dict:
    """BERT-base with every encoder Linear pruned beforehand to 90 % of the target's blocks, compiled
    with **no flag** (the default pass finds the pre-pruned weights and keeps BSR where it measures
    faster), against ONNX Runtime on the dense model: round-robin, same threads."""
    import transformers

    from hwcomp.models import HFEncoder
    from hwcomp.runtime.measure import prepared_call, time_round_robin

    block = tuple(target.sparse_block)
    torch.manual_seed(0)
    dense = HFEncoder(transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False)).eval()
    sparse = copy.deepcopy(dense)
    with torch.no_grad():
        for name, mod in sparse.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".encoder." in f".{name}.":
                mod.weight.copy_(torch.from_numpy(block_prune(mod.weight.detach().numpy(), 0.9, block)))
    seq = 128
    inputs = (torch.randint(0, 30000, (1, seq)), torch.ones(1, seq, dtype=torch.int64))
    row: dict = {"model": "bert-base", "seq": seq, "sparsity": 0.9, "block": f"{block[0]}x{block[1]}",
                 "flags": "none"}
    lines: list[str] = []
    t0 = time.perf_counter()
    art = hwcomp.compile(sparse, target, workdir / "bert-sparse", example_inputs=inputs,
                         log=lines.append)
    row["compile_s"] = time.perf_counter() - t0
    found = [ln for ln in lines if "pre-pruned" in ln]
    log("  " + (found[0] if found else "no pre-pruned weights found"))
    row["compile_report"] = found[0] if found else None
    row["max_abs_err_vs_pruned_torch"] = art.fidelity["max_abs_err"]
    row["cosine_vs_pruned_torch"] = art.fidelity["min_cosine"]
    calls = [prepared_call(art.vm(), art.device(), art.device_args([t.numpy() for t in inputs]))]
    sess, feeds = ort_session(dense, inputs, workdir / "bert.onnx")
    if sess is None:
        row["ort_skipped"] = "ONNX export or session failed (see message above)"
    else:
        calls.append(lambda: sess.run(None, feeds))
    stats = time_round_robin(calls, number=1, rounds=args.repeat, pause_s=0.1)
    row["hwcomp_sparse_median_ms"] = stats[0].median
    log(f"  hwcomp BERT, pre-pruned, no flag: {stats[0].median:.1f} ms (fidelity {art.fidelity['max_abs_err']:.1e})")
    if sess is not None:
        row["ort_dense_median_ms"] = stats[1].median
        row["speedup_vs_ort_median"] = stats[1].median / stats[0].median
        log(f"  ORT dense BERT {stats[1].median:.1f} ms -> {row['speedup_vs_ort_median']:.2f}x")
    return row


def plot(rows: list[dict], baselines: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for blk in dict.fromkeys(r["block"] for r in rows):
        pts = [(r["sparsity"], r["bsr_ms"]) for r in rows if r["block"] == blk]
        ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=f"hwcomp BSR {blk}")
    csr = {}
    for r in rows:
        csr.setdefault(r["sparsity"], []).append(r["torch_csr_ms"])
    ax.plot([s * 100 for s in csr], [min(v) for v in csr.values()], "k:", marker="x", label="torch CSR")
    for key, style, label in (("onednn_dense_ms", "--", "oneDNN dense"), ("torch_dense_ms", "-.", "torch dense (MKL)"),
                              ("hwcomp_dense_ms", ":", "hwcomp dense (default)")):
        ax.axhline(baselines[key], linestyle=style, color="gray", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title(f"linear {K}->{N}, {M} rows, fp32, {platform.machine()} {os.cpu_count()} cores")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="8x1/16x1 at 70/90%%, default knobs, no BERT")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--number", type=int, default=10)
    p.add_argument("--bert-only", action="store_true",
                   help="only the pre-pruned BERT-base against ORT dense (bench/results/sparse_bert.json)")
    args = p.parse_args()
    if args.quick:
        args.repeat, args.number = min(args.repeat, 5), min(args.number, 5)
    torch.set_num_threads(os.cpu_count() or 1)
    target = get_target("host")

    def log(s: str) -> None:
        print(s, flush=True)

    if args.bert_only:
        log(f"[bert-base 90% pre-pruned, no flag] target {target.description}")
        with tempfile.TemporaryDirectory(prefix="hwcomp-sparse-") as tmp:
            bert = bench_bert(target, args, log, Path(tmp))
        write_results("sparse_bert", {"machine": target.description, "bert": bert})
        print(f"sparse_bert_base_90pct_speedup_vs_ort={bert.get('speedup_vs_ort_median', float('nan')):.2f}")
        return
    log(f"[linear {M}x{K} -> {N}] target {target.description}, vector {target.vector_bits} bits")
    rows, baselines = bench_linear(target, args, log)
    print_table(rows, ["block", "sparsity", "bsr_ms", "hwcomp_dense_ms", "onednn_dense_ms", "onednn_adjacent_ms",
                       "torch_dense_ms", "torch_csr_ms", "speedup_vs_onednn", "speedup_vs_hwcomp_dense",
                       "speedup_vs_csr"])
    bert = None
    if args.quick:
        log("[bert-base] skipped (--quick)")
    else:
        log("[bert-base 90% 16x1] compiling (tunes the BSR knobs per shape) and measuring ...")
        with tempfile.TemporaryDirectory(prefix="hwcomp-sparse-") as tmp:
            bert = bench_bert(target, args, log, Path(tmp))
        print_table([bert], ["model", "hwcomp_sparse_median_ms", "ort_dense_median_ms", "speedup_vs_ort_median",
                             "max_abs_err_vs_pruned_torch", "compile_s"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(rows, baselines, RESULTS / "sparse.png")
    write_results("sparse", {"machine": target.description, "quick": args.quick, "shape": [M, K, N],
                             "linear": rows, "baselines": baselines, "bert": bert})
    key = next((r for r in rows if r["block"] == "16x1" and abs(r["sparsity"] - 0.9) < 1e-9), None)
    print(f"sparse_linear_90pct_16x1_speedup_vs_onednn={key['speedup_vs_onednn']:.2f}" if key
          else "sparse_linear_90pct_16x1_speedup_vs_onednn=nan")


if __name__ == "__main__":
    main()
