"""Tuning efficiency: MetaSchedule with the XGBoost cost model vs random search.

For three fp32 matmul shapes of BERT-base at sequence 128 (128×768·768×768, 128×768·768×3072,
128×3072·3072×768) each method tunes from an empty database with the same budget, batch size and seed:

- ``xgb``: MetaSchedule's evolutionary search ranked by its ``XGBModel`` (what ``hwcomp tune`` does);
- ``random``: random search, every candidate an independent sample of the same design space
  (``ReplayTrace``, no model) — the baseline the issue names;
- ``evo-nomodel``: the evolutionary search with random scores (``RandomModel``): an ablation that keeps
  the search's mutation of the best measured candidates and removes only the model.

Reported per shape and method: best GFLOP/s after each trial, and the trials needed to reach 90% of the
best GFLOP/s found by any method (a method that never gets there is counted as budget + 1).

    python bench/tuning.py [--trials 64] [--per-round 16] [--quick] [--seeds 0,1] [--methods ...]

Default budget: 64 trials per shape per method (576 measured candidates in all; about 15 min on 2
cores of a Zen 1 EPYC with TVM's runtime on both). ``--quick``: 32 trials, 8 per round.
Writes ``bench/results/tuning.json`` and ``bench/results/tuning.png``. Last lines:
``tuning_trials_to_90pct_xgb_over_evo_nomodel=<ratio>`` and
``tuning_trials_to_90pct_xgb_over_random=<geometric mean over shapes (and seeds) of xgb/random>``
(< 1: XGBoost needs fewer trials).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS, print_table, write_results  # noqa: E402

SHAPES = [(128, 768, 768), (128, 768, 3072), (128, 3072, 768)]
#: method → (cost model, search) as ``hwcomp.tune.tune`` takes them
METHODS = {"xgb": ("xgb", "evolutionary"), "random": ("random", "random"), "evo-nomodel": ("random", "evolutionary")}


def matmul_module(m: int, k: int, n: int):
    import tvm
    from tvm import te

    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="matmul")
    return tvm.IRModule({"main": te.create_prim_func([a, b, c]).with_attr("global_symbol", "main")})


def curve_from_db(db: Path, flop: float) -> tuple[list[float], list[float | None]]:
    """Per measured candidate, in measurement order: its GFLOP/s (None if it failed) and the best so far."""
    from hwcomp.records import FAILED_SECS, RECORDS

    per_trial, best, out = [], 0.0, []
    for line in (db / RECORDS).read_text().splitlines():
        secs = json.loads(line)[1][1]
        g = flop / (sum(secs) / len(secs)) / 1e9 if secs and min(secs) < FAILED_SECS else None
        per_trial.append(g)
        best = max(best, g or 0.0)
        out.append(best)
    return out, per_trial


def trials_to(curve: list[float], level: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v >= level), None)


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=64, help="trials per shape per method (default 64)")
    p.add_argument("--per-round", type=int, default=16, help="candidates per round (default 16)")
    p.add_argument("--quick", action="store_true", help="32 trials, 8 per round")
    p.add_argument("--target", default="host")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; every shape is tuned once per seed")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {', '.join(METHODS)} (xgb required)")
    p.add_argument("--shapes", help="MxKxN,... (default: the three BERT-base shapes)")
    args = p.parse_args()
    if args.quick:
        args.trials, args.per_round = 32, 8
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    if "xgb" not in methods or any(m not in METHODS for m in methods):
        raise SystemExit(f"--methods: a subset of {', '.join(METHODS)} that includes xgb")

    from hwcomp.target import get_target
    from hwcomp.tune.tuner import TuneOptions, tune

    target = get_target(args.target)
    print(f"target {target.name}: {target.description}; {args.trials} trials per shape per method, "
          f"{args.per_round} per round, seeds {seeds}", flush=True)
    t_all = time.monotonic()
    results = []
    for seed in seeds:
        for shape in shapes:
            m, k, n = shape
            flop = 2.0 * m * k * n
            entry = {"shape": list(shape), "seed": seed, "flop": flop, "methods": {}}
            for method in methods:
                cost_model, search = METHODS[method]
                work = Path(tempfile.mkdtemp(prefix=f"hwcomp-bench-tuning-{method}-"))
                t0 = time.monotonic()
                tune(matmul_module(*shape), target,
                     TuneOptions(trials=args.trials, db_dir=work, trials_per_round=args.per_round,
                                 cost_model=cost_model, search=search, seed=seed, progress=sys.stderr.isatty(),
                                 baseline=False, confirm=False), log=None)
                wall = time.monotonic() - t0
                curve, per_trial = curve_from_db(work, flop)
                shutil.rmtree(work, ignore_errors=True)
                entry["methods"][method] = {"curve_gflops": curve, "trial_gflops": per_trial, "wall_s": round(wall, 1),
                                            "best_gflops": max(curve) if curve else 0.0, "trials": len(curve)}
                print(f"  seed {seed} {m}x{k}x{n} {method:11s}: best {max(curve) if curve else 0:.1f} GFLOP/s "
                      f"after {len(curve)} trials ({wall:.0f} s)", flush=True)
            best = max(v["best_gflops"] for v in entry["methods"].values())
            entry["best_gflops"] = best
            for v in entry["methods"].values():
                t90 = trials_to(v["curve_gflops"], 0.9 * best)
                v["trials_to_90pct"] = t90
                v["reached_90pct"] = t90 is not None
            results.append(entry)

    def t90(entry, method):
        v = entry["methods"][method]
        return v["trials_to_90pct"] if v["trials_to_90pct"] is not None else v["trials"] + 1

    baselines = [b for b in methods if b != "xgb"]
    ratios = {b: [t90(e, "xgb") / t90(e, b) for e in results] for b in baselines}
    rows = []
    for i, e in enumerate(results):
        mx = e["methods"]
        row = {"shape": "x".join(map(str, e["shape"])), "seed": e["seed"], "best GFLOP/s": e["best_gflops"]}
        for method in methods:
            row[f"{method} best"] = mx[method]["best_gflops"]
        for method in methods:
            row[f"{method} to 90%"] = _t(mx[method])
        for b in baselines:
            row[f"xgb/{b}"] = ratios[b][i]
        rows.append(row)
    print_table(rows, list(rows[0]))
    total = time.monotonic() - t_all
    plot(results, methods)
    summary = {b: geomean(r) for b, r in ratios.items()}
    write_results("tuning", {
        "target": target.to_dict(), "trials_per_method": args.trials, "per_round": args.per_round,
        "seeds": seeds, "methods": {m: {"cost_model": METHODS[m][0], "search": METHODS[m][1]} for m in methods},
        "shapes": results, "ratio_trials_to_90pct_xgb_over": summary, "per_shape_ratio": ratios,
        "wall_s": round(total, 1),
    })
    print(f"total wall time {total / 60:.1f} min")
    # the figure (xgb over plain random search) is the last line
    for b in sorted(baselines, key=lambda b: b == "random"):
        print(f"tuning_trials_to_90pct_xgb_over_{b.replace('-', '_')}={summary[b]:.3f}")


def _t(v: dict) -> str:
    return str(v["trials_to_90pct"]) if v["trials_to_90pct"] is not None else f">{v['trials']}"


def plot(results: list[dict], methods: list[str]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plot)")
        return None
    seeds = sorted({e["seed"] for e in results})
    cols = len(results) // len(seeds)  # one row per seed, one column per shape
    fig, axes = plt.subplots(len(seeds), cols, figsize=(5 * cols, 4 * len(seeds)), squeeze=False)
    for ax, e in zip(axes.flat, results):
        for method, style in zip(methods, ("-", "--", ":")):
            c = e["methods"][method]["curve_gflops"]
            ax.plot(range(1, len(c) + 1), c, style, label=f"{method} (90% at {_t(e['methods'][method])})")
        ax.axhline(0.9 * e["best_gflops"], color="gray", lw=0.8, ls=":", label="90% of best")
        ax.set_title("matmul " + "x".join(map(str, e["shape"])) + f" (seed {e['seed']})")
        ax.set_xlabel("trials")
        ax.set_ylabel("best GFLOP/s so far")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("MetaSchedule: XGBoost-guided search vs random search and vs the search without a model")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "tuning.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
