"""Tuning efficiency: MetaSchedule with the XGBoost cost model vs without a model (random scores).

For three fp32 matmul shapes of BERT-base at sequence 128 (128×768·768×768, 128×768·768×3072,
128×3072·3072×768) each method tunes from an empty database with the same budget, search strategy
(evolutionary), batch size and seed; the only difference is the cost model that ranks candidates
(``XGBModel`` vs ``RandomModel``). Reported per shape and method: best GFLOP/s after each trial, and
the trials needed to reach 90% of the best GFLOP/s found by either method (a method that never gets
there is counted as budget + 1).

    python bench/tuning.py [--trials 64] [--per-round 16] [--quick] [--target host]

Default budget: 64 trials per shape per method (384 measured candidates in all; about 10 min on
2 cores of a Zen 1 EPYC with TVM's runtime on both). ``--quick``: 32 trials, 8 per round (about half).
Writes ``bench/results/tuning.json`` and ``bench/results/tuning.png``. Last line:
``tuning_trials_to_90pct_xgb_over_random=<geometric mean over shapes of xgb/random>`` (< 1: XGBoost
needs fewer trials).
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
METHODS = ("xgb", "random")


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
    from hwcomp.tune.database import FAILED_SECS, RECORDS

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=64, help="trials per shape per method (default 64)")
    p.add_argument("--per-round", type=int, default=16, help="candidates per round (default 16)")
    p.add_argument("--quick", action="store_true", help="32 trials, 8 per round")
    p.add_argument("--target", default="host")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shapes", help="MxKxN,... (default: the three BERT-base shapes)")
    args = p.parse_args()
    if args.quick:
        args.trials, args.per_round = 32, 8
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]

    from hwcomp.target import get_target
    from hwcomp.tune.tuner import tune

    target = get_target(args.target)
    print(f"target {target.name}: {target.description}; {args.trials} trials per shape per method, "
          f"{args.per_round} per round", flush=True)
    t_all = time.monotonic()
    results = []
    for shape in shapes:
        m, k, n = shape
        flop = 2.0 * m * k * n
        entry = {"shape": list(shape), "flop": flop, "methods": {}}
        for method in METHODS:
            work = Path(tempfile.mkdtemp(prefix=f"hwcomp-bench-tuning-{method}-"))
            t0 = time.monotonic()
            tune(matmul_module(*shape), target, trials=args.trials, db_dir=work, trials_per_round=args.per_round,
                 cost_model=method, seed=args.seed, progress=sys.stderr.isatty(), log=None, baseline=False)
            wall = time.monotonic() - t0
            curve, per_trial = curve_from_db(work, flop)
            shutil.rmtree(work, ignore_errors=True)
            entry["methods"][method] = {"curve_gflops": curve, "trial_gflops": per_trial, "wall_s": round(wall, 1),
                                        "best_gflops": max(curve) if curve else 0.0, "trials": len(curve)}
            print(f"  {m}x{k}x{n} {method:6s}: best {max(curve) if curve else 0:.1f} GFLOP/s after "
                  f"{len(curve)} trials ({wall:.0f} s)", flush=True)
        best = max(v["best_gflops"] for v in entry["methods"].values())
        entry["best_gflops"] = best
        for method, v in entry["methods"].items():
            t90 = trials_to(v["curve_gflops"], 0.9 * best)
            v["trials_to_90pct"] = t90
            v["reached_90pct"] = t90 is not None
        results.append(entry)

    def t90(entry, method):
        v = entry["methods"][method]
        return v["trials_to_90pct"] if v["trials_to_90pct"] is not None else v["trials"] + 1

    ratios = [t90(e, "xgb") / t90(e, "random") for e in results]
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    rows = []
    for e, r in zip(results, ratios):
        mx = e["methods"]
        rows.append({"shape": "x".join(map(str, e["shape"])), "best GFLOP/s": e["best_gflops"],
                     "xgb best": mx["xgb"]["best_gflops"], "random best": mx["random"]["best_gflops"],
                     "xgb trials to 90%": _t(mx["xgb"]), "random trials to 90%": _t(mx["random"]),
                     "xgb/random": r})
    print_table(rows, list(rows[0]))
    total = time.monotonic() - t_all
    plot(results)
    write_results("tuning", {
        "target": target.to_dict(), "trials_per_method": args.trials, "per_round": args.per_round,
        "seed": args.seed, "search": "evolutionary (MetaSchedule default rules), same seed for both methods",
        "shapes": results, "ratio_trials_to_90pct_xgb_over_random": geo, "per_shape_ratio": ratios,
        "wall_s": round(total, 1),
    })
    print(f"total wall time {total / 60:.1f} min")
    print(f"tuning_trials_to_90pct_xgb_over_random={geo:.3f}")


def _t(v: dict) -> str:
    return str(v["trials_to_90pct"]) if v["trials_to_90pct"] is not None else f">{v['trials']}"


def plot(results: list[dict]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plot)")
        return None
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, e in zip(axes[0], results):
        for method, style in (("xgb", "-"), ("random", "--")):
            c = e["methods"][method]["curve_gflops"]
            ax.plot(range(1, len(c) + 1), c, style, label=f"{method} (90% at {_t(e['methods'][method])})")
        ax.axhline(0.9 * e["best_gflops"], color="gray", lw=0.8, ls=":", label="90% of best")
        ax.set_title("matmul " + "x".join(map(str, e["shape"])))
        ax.set_xlabel("trials")
        ax.set_ylabel("best GFLOP/s so far")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("MetaSchedule: XGBoost cost model vs random (same search, same budget)")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "tuning.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
