"""Model zoo: every architecture in ``hwcomp.zoo`` at its realistic size, compiled for the host, run,
checked against PyTorch eager (cosine, max abs error / max |output|) and timed against its peers.

    python bench/zoo.py [--size realistic|tiny] [--only resnet18,gpt2] [--rounds 20] [--threads N]
                        [--tuned DB_DIR]
    python bench/zoo.py --compile-only [--size realistic|tiny] [--only ...]

``--compile-only``: compile (no tuning database), run once and compare; one line per model, then
``zoo_correct=<k>/<n>`` last; writes ``bench/results/zoo_compile.json``. A model is correct when
cosine >= 0.999 and max abs error <= 1e-3 x max |output| (fp32, untuned schedules, fast math on).

Otherwise every model is timed, all frameworks in one process, round-robin (each round times one
call of each framework in turn; median over the rounds), after a warm-up, every framework on the
same ``--threads`` (default: every CPU this process may use):

- hwcomp untuned: ``hwcomp.compile(model, "host")`` defaults (default rules + shipped records);
- hwcomp tuned: ``CompileOptions(database=DB_DIR)``, with ``--tuned DB_DIR``; where ``DB_DIR`` has a
  folder named after the model (``DB_DIR/resnet50``), that folder is the model's own database (one
  run over several models, each tuned for itself), and a model without one gets no tuned column;
- PyTorch eager (``torch.set_num_threads``);
- ONNX Runtime (``torch.onnx.export``, CPUExecutionProvider, ``intra_op_num_threads``);
- OpenVINO (the same ONNX file, CPU plugin, ``INFERENCE_NUM_THREADS``, ``PERFORMANCE_HINT=LATENCY``,
  ``INFERENCE_PRECISION_HINT=f32``: fp32 like everyone else, not the bf16 default of AMX CPUs).

A peer that fails on a model is a "-" in the table with its reason in the JSON. Per model: ms per
framework, hwcomp (tuned when given) / best peer, the model's GFLOP (``FlopCounterMode``) and
hwcomp's GFLOP/s against the fp32 FMA peak measured by ``bench/peak.py``. Writes
``bench/results/zoo.json`` and ``bench/results/zoo.png``; the last two lines are
``zoo_worst_hwcomp_over_best_peer=<x>`` and ``zoo_geomean_hwcomp_over_best_peer=<x>``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
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
import peers
from common import RESULTS, print_table, write_results

# Imported by main() once TVM_NUM_THREADS is set: hwcomp sets it (setdefault) when imported.
hwcomp = zoo = None

COS_MIN = 0.999
REL_ERR_MAX = 1e-3
PEERS = ("torch", "ort", "openvino")
PEER_NAMES = {"torch": "PyTorch", "ort": "ONNX Runtime", "openvino": "OpenVINO"}


def compare(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(cosine, max abs error / max |ref|) in float64."""
    a, b = out.ravel().astype(np.float64), ref.ravel().astype(np.float64)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return cos, float(np.abs(a - b).max() / np.abs(b).max())


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


def run_one(name: str, size: str, workdir: Path) -> dict:
    """--compile-only: compile without a tuning database, run once, compare with PyTorch."""
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
    return row


def tuned_database(tuned: str | None, name: str) -> Path | None:
    """``--tuned``'s database for model ``name``: ``DIR/name`` where the folder has per-model
    databases, else ``DIR`` itself (one database for every model); None without ``--tuned`` or where
    a per-model folder set has none for this model."""
    if not tuned:
        return None
    root = Path(tuned)
    per_model = [d for d in root.iterdir() if d.is_dir() and d.name in zoo.ARCHITECTURES] if root.is_dir() else []
    if per_model:
        return root / name if (root / name).is_dir() else None
    return root


def run_timed(name: str, args, workdir: Path, peak_gflops: float | None) -> dict:
    """Compile hwcomp (untuned, and tuned with --tuned), check it against PyTorch, set up the peers
    and time every framework round-robin."""
    from hwcomp.runtime.measure import prepared_call, time_round_robin

    row: dict = {"model": name, "size": args.size}
    t0 = time.perf_counter()
    model = zoo.build(name, args.size)
    row["params_m"] = model.n_params / 1e6
    row["inputs"] = [list(x.shape) for x in model.inputs]
    ref = model.reference()
    row["gflop"] = peers.count_flops(model.module, model.inputs) / 1e9
    row["build_s"] = time.perf_counter() - t0
    arrays = [x.numpy() for x in model.inputs]
    wd = workdir / name
    wd.mkdir(parents=True, exist_ok=True)
    calls: dict = {}

    variants = [("hwcomp_untuned", hwcomp.CompileOptions(verify=False))]
    database = tuned_database(args.tuned, name)
    if database is not None:
        row["tuned_database"] = str(database)
        variants.append(("hwcomp_tuned", hwcomp.CompileOptions(database=database, verify=False)))
    for label, options in variants:
        t0 = time.perf_counter()
        art = hwcomp.compile(model.module, "host", wd / label, example_inputs=model.inputs, options=options)
        row[f"{label}_compile_s"] = time.perf_counter() - t0
        cos, err = compare(art.run(arrays)[0], ref)
        tag = "" if label == "hwcomp_untuned" else "tuned_"
        row[f"{tag}cosine"], row[f"{tag}max_rel_err"] = cos, err
        row[f"{tag}correct"] = bool(cos >= COS_MIN and err <= REL_ERR_MAX)
        calls[label] = prepared_call(art.vm(), art.device(), art.device_args(arrays))

    errors: dict = {}
    row["peer_cosine"] = {}

    def add_peer(label: str, make) -> None:
        try:
            made = make()
            call, output = made[0], made[1]
            row["peer_cosine"][label] = compare(output(), ref)[0]
            calls[label] = call
            if label == "openvino":
                row["openvino_source"] = made[2]
        except Exception as e:  # noqa: BLE001 - a peer's failure is a result, not the end of the run
            errors[label] = _reason(e)

    add_peer("torch", lambda: peers.torch_runner(model.module, model.inputs))
    onnx_path, names = None, [f"input{i}" for i in range(len(arrays))]
    try:
        names, row["onnx_exporter"] = peers.export_onnx(model.module, model.inputs, wd / "model.onnx")
        onnx_path = wd / "model.onnx"
    except Exception as e:  # noqa: BLE001
        errors["ort"] = f"no ONNX file: {_reason(e)}"
    if onnx_path is not None:
        add_peer("ort", lambda: peers.ort_runner(onnx_path, names, arrays, args.threads))
    add_peer("openvino", lambda: peers.openvino_runner(onnx_path, model.module, model.inputs, names, arrays,
                                                       args.threads))
    if errors:
        row["peer_errors"] = errors

    labels = list(calls)
    for fn in calls.values():  # warm-up (first-call allocation, thread pools, OpenVINO's lazy init)
        for _ in range(args.warmup):
            fn()
    stats = time_round_robin([calls[k] for k in labels], number=1, rounds=args.rounds, pause_s=args.pause)
    row["samples_ms"] = {}
    for label, st in zip(labels, stats):
        row[f"{label}_ms"] = st.median
        row["samples_ms"][label] = [round(x, 4) for x in st.samples_ms]

    hw_label = "hwcomp_tuned" if "hwcomp_tuned_ms" in row else "hwcomp_untuned"
    hw = row[f"{hw_label}_ms"]
    row["hwcomp_ms"], row["hwcomp_variant"] = hw, hw_label
    timed = [(row[f"{k}_ms"], k) for k in PEERS if f"{k}_ms" in row]
    if timed:
        best_ms, best = min(timed)
        row["best_peer"], row["best_peer_ms"] = best, best_ms
        row["hwcomp_over_best_peer"] = hw / best_ms
    row["hwcomp_gflops"] = row["gflop"] / (hw / 1e3)
    if peak_gflops:
        row["pct_of_fp32_peak"] = 100 * row["hwcomp_gflops"] / peak_gflops
    return row


def line(row: dict) -> str:
    if "error" in row:
        return f"{row['model']:<22} FAIL  {row['error']}"
    compile_s = row.get("compile_s", row.get("hwcomp_untuned_compile_s", float("nan")))
    s = (f"{row['model']:<22} {row['params_m']:7.1f}M  compile {compile_s:6.1f}s  "
         f"cos {row['cosine']:.6f}  max_rel_err {row['max_rel_err']:.1e}  {'OK' if row['correct'] else 'WRONG'}")
    if "hwcomp_ms" in row:
        times = "  ".join(f"{k.replace('hwcomp_', '')} {row[k + '_ms']:.2f}" if k + "_ms" in row else f"{k} -"
                          for k in ("hwcomp_untuned", "hwcomp_tuned", *PEERS)
                          if k != "hwcomp_tuned" or "hwcomp_tuned_ms" in row)
        s += f"  ms: {times}"
        if "hwcomp_over_best_peer" in row:
            s += f"  hwcomp/{row['best_peer']} {row['hwcomp_over_best_peer']:.2f}"
    return s


def fp32_peak(threads: int, override: float | None, machine: dict) -> tuple[float | None, str]:
    """This CPU's fp32 FMA peak on ``threads`` threads (GFLOP/s) and where the figure comes from:
    ``bench/peak.py``'s loops run now, or the figure it recorded in ``bench/results/peak.json`` when
    that is higher (a peak is a best case, and a busy machine measures low) — but only a figure
    recorded on this CPU (same model name and AVX-512 flags) and within 1.25x of today's: the file
    may come from another session's CPU (a Xeon's 431 GFLOP/s was once applied to a Zen 4's 234)."""
    if override:
        return override, "--peak-gflops"
    measured = recorded = None
    why = ""
    try:
        from peak import measure_peaks

        measured = float(measure_peaks(threads)["fp32_fma_gflops"])
    except Exception as e:  # noqa: BLE001 - no gcc / not x86: the recorded peak, if any
        why = f" (measuring failed: {_reason(e)})"
    try:
        saved = json.loads((RESULTS / "peak.json").read_text())
        recorded = float(next(r for r in saved["rows"] if r["threads"] == threads)["fp32_fma_gflops"])
        there = saved.get("machine") or {}
        if any(machine.get(k) != there.get(k) for k in ("cpu", "avx2", "avx512_flags")):
            why += f" (recorded on another CPU: {there.get('cpu')}, {recorded:.1f})"
            recorded = None
        elif measured and recorded > 1.25 * measured:
            why += f" (recorded {recorded:.1f} is over 1.25x today's: another CPU)"
            recorded = None
    except (OSError, ValueError, KeyError, TypeError, StopIteration):  # none recorded for this thread count
        recorded = None
    now = f"measured now {measured:.1f}" if measured else "not measured now" + why
    if recorded and (not measured or recorded > measured):
        return recorded, f"bench/results/peak.json ({now})"
    if measured:
        rec = f", recorded {recorded:.1f}" if recorded else ""
        return measured, f"bench/peak.py measure_peaks ({now}{rec}){why}"
    return None, "unknown" + why


def plot(rows: list[dict], machine: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any("hwcomp_over_best_peer" in r for r in rows):
        return
    colors = {"torch": "tab:orange", "ort": "tab:blue", "openvino": "tab:purple"}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) + 2), 4.5))
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=1)
    for xi, r in enumerate(rows):
        v = r.get("hwcomp_over_best_peer")
        if v is None:  # hwcomp or every peer failed: an empty slot that says so
            ax.annotate("hwcomp failed" if "error" in r else "no peer", (xi, 1.0), ha="center", va="bottom",
                        fontsize=7, rotation=90, color="tab:red")
            continue
        ax.bar(xi, v, color=colors[r["best_peer"]])
        ax.annotate(f"{v:.2f}", (xi, v), ha="center", va="bottom", fontsize=7)
    x = np.arange(len(rows))
    ax.set_xticks(x, [r["model"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("hwcomp / best peer (lower is better)")
    ax.set_title(f"hwcomp vs best of PyTorch / ONNX Runtime / OpenVINO, {rows[0]['size']} size\n"
                 f"{machine['cpu']}, {machine['threads']} threads", fontsize=9)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()],
              labels=[f"best peer: {PEER_NAMES[k]}" for k in colors], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    global hwcomp, zoo

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compile-only", action="store_true", help="compile, run once and compare; no timing")
    p.add_argument("--size", choices=["realistic", "tiny"], default="realistic")
    p.add_argument("--only", help="comma-separated architecture names (default: all)")
    p.add_argument("--rounds", "--repeat", dest="rounds", type=int, default=20,
                   help="round-robin rounds (one call of each framework per round)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads for every framework (default: the CPUs this process may use)")
    p.add_argument("--tuned", metavar="DB_DIR", help="tuning database: adds an hwcomp-tuned column")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls of each framework first")
    p.add_argument("--pause", type=float, default=0.1,
                   help="seconds before each timed call (lets the previous framework's threads park)")
    p.add_argument("--peak-gflops", type=float, help="fp32 peak to use instead of measuring it")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    import hwcomp as _hwcomp
    from hwcomp import zoo as _zoo

    hwcomp, zoo = _hwcomp, _zoo
    names = args.only.split(",") if args.only else list(zoo.ARCHITECTURES)
    machine = peers.machine_info(args.threads)
    peak_gflops, peak_source = (None, "") if args.compile_only else fp32_peak(args.threads, args.peak_gflops, machine)
    if peak_gflops:
        print(f"fp32 peak on {args.threads} threads: {peak_gflops:.1f} GFLOP/s ({peak_source})", flush=True)

    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="hwcomp-zoo-"))
    try:
        for name in names:
            t0 = time.perf_counter()
            try:
                row = (run_one(name, args.size, workdir) if args.compile_only
                       else run_timed(name, args, workdir, peak_gflops))
            except Exception as e:  # noqa: BLE001 - one model's failure is a result, not the end of the run
                row = {"model": name, "size": args.size, "error": _reason(e),
                       "traceback": traceback.format_exc(limit=-6), "correct": False}
            row["total_s"] = time.perf_counter() - t0
            rows.append(row)
            print(line(row), flush=True)
            shutil.rmtree(workdir / name, ignore_errors=True)
            gc.collect()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    correct = sum(r["correct"] for r in rows)
    criteria = {"cosine_min": COS_MIN, "max_rel_err_max": REL_ERR_MAX}
    if args.compile_only:
        write_results("zoo_compile", {"machine": machine, "size": args.size, "criteria": criteria,
                                      "models": rows, "correct": correct, "total": len(rows)})
        print(f"zoo_correct={correct}/{len(rows)}")
        return

    print()
    cols = ["model", "gflop", "hwcomp_untuned_ms", "hwcomp_tuned_ms", "torch_ms", "ort_ms", "openvino_ms",
            "best_peer", "hwcomp_over_best_peer", "hwcomp_gflops", "pct_of_fp32_peak", "cosine"]
    print_table(rows, cols)
    for r in rows:
        for peer, why in r.get("peer_errors", {}).items():
            print(f"  {r['model']}: {peer} -: {why}")
        if "error" in r:
            print(f"  {r['model']}: hwcomp failed: {r['error']}")
    ratios = [r["hwcomp_over_best_peer"] for r in rows if "hwcomp_over_best_peer" in r]
    worst = max(ratios) if ratios else float("nan")
    geomean = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")
    write_results("zoo", {"machine": machine, "size": args.size, "rounds": args.rounds,
                          "warmup": args.warmup, "pause_s": args.pause, "tuned_database": args.tuned,
                          "fp32_peak_gflops": peak_gflops, "fp32_peak_source": peak_source,
                          "criteria": criteria, "models": rows, "correct": correct, "total": len(rows),
                          "timed": len(ratios), "worst_hwcomp_over_best_peer": worst,
                          "geomean_hwcomp_over_best_peer": geomean})
    plot(rows, machine, RESULTS / "zoo.png")
    print(f"zoo_correct={correct}/{len(rows)}  zoo_timed={len(ratios)}/{len(rows)}")
    print(f"zoo_worst_hwcomp_over_best_peer={worst:.3f}")
    print(f"zoo_geomean_hwcomp_over_best_peer={geomean:.3f}")


if __name__ == "__main__":
    main()
