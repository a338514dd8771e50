"""Tune the records shipped with hwcomp for a target (``schedules/<target>/records/``).

    python -m hwcomp.tune.ship [--target x86-avx2] [--budget 25m] [--models mlp,cnn,minilm,bert-base] [--list]

The models are the benchmark models (``hwcomp.models.benchmark_model``, measured by ``bench/e2e.py``)
at the shapes the benchmarks compile: the MLP 512→1024→1024→10 at batch 1, SmallCNN on 1×3×32×32,
all-MiniLM-L6-v2 and BERT-base (random init) at sequence 128, batch 1. Records are tied to workloads
(shapes), not to weights. The budget is split over the models (BERT-base gets most: its matmuls
dominate), each run stops between rounds when its share is used up, and the result is pruned to the
best records per workload so the shipped files stay small. Measurements use every core of the
machine (the runtime's thread count compile's artifacts run with).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

#: (model, share of the budget, trials, trials per round, task-name filter)
PLAN = {
    "mlp": (0.08, 64, 8, None),
    "cnn": (0.12, 96, 8, None),
    "minilm": (0.20, 1000, 16, ("matmul", "dense")),
    "bert-base": (0.60, 2000, 16, ("matmul", "dense")),
}
KEEP_TOP = 4  # records per workload kept in the shipped files (compile only uses the best)


def main(argv: list[str] | None = None) -> int:
    from hwcomp.models import benchmark_model
    from hwcomp.target import get_target
    from hwcomp.tune import database as dbm
    from hwcomp.tune.tasks import extract_tasks, lower_for_tuning
    from hwcomp.tune.tuner import TuneOptions, parse_duration, tune

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="x86-avx2")
    p.add_argument("--budget", default="25m", help="total tuning wall time (default 25m)")
    p.add_argument("--models", default=",".join(PLAN))
    p.add_argument("--work", help="working database (default: a temporary directory)")
    p.add_argument("--out", help="shipped records directory (default: schedules/<target>/records in this checkout)")
    p.add_argument("--list", action="store_true", help="only list each model's tasks")
    p.add_argument("--reship", action="store_true",
                   help="no tuning: re-check the baselines of --work and write the shipped files from it")
    p.add_argument("--keep-from", help="a database whose records are shipped for --keep-models' workloads "
                   "instead of the new ones (records that measured faster end to end)")
    p.add_argument("--keep-models", default="", help="comma-separated models for --keep-from")
    args = p.parse_args(argv)

    target = get_target(args.target)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.list:
        for name in names:
            model, inputs = benchmark_model(name)
            tasks = extract_tasks(lower_for_tuning(model, target, example_inputs=inputs), target)
            print(f"{name}: {len(tasks)} tasks")
            for t in sorted(tasks, key=lambda t: -t.flop * t.weight):
                print(f"  {t.name:50s} weight {t.weight:3g}  {t.flop * t.weight / 1e6:10.1f} MFLOP")
        return 0

    budget = parse_duration(args.budget)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="hwcomp-ship-"))
    out = Path(args.out) if args.out else Path(__file__).resolve().parents[2] / "schedules" / \
        target.name.replace("-", "_") / "records"
    t0 = time.monotonic()
    summary = []
    shares = sum(PLAN[n][0] for n in names)
    for name in names:
        share, trials, per_round, only = PLAN[name]
        left = budget - (time.monotonic() - t0)
        model_budget = min(left, budget * share / shares)
        if model_budget < 30:
            print(f"{name}: no time left, skipped")
            continue
        model, inputs = benchmark_model(name)
        print(f"== {name}: {model_budget / 60:.1f} min, up to {trials} trials", flush=True)
        r = tune(model, target, TuneOptions(trials=0 if args.reship else trials, time_budget_s=model_budget,
                                            db_dir=work, example_inputs=inputs, trials_per_round=per_round,
                                            task_names=only, seed=0, progress=sys.stderr.isatty()))
        summary.append((name, r))
    elapsed = time.monotonic() - t0
    out.mkdir(parents=True, exist_ok=True)
    for f in (*dbm.DATA_FILES, dbm.META):
        if (out / f).exists():
            (out / f).unlink()
    dbm.write_meta(out, target)
    (out / dbm.WORKLOADS).write_text("")
    (out / dbm.RECORDS).write_text("")
    keep_models = [m.strip() for m in args.keep_models.split(",") if m.strip()]
    if args.keep_from and keep_models:
        # These models' workloads come from --keep-from: the new records of those workloads are left out.
        keys: set[str] = set()
        for name in keep_models:
            model, inputs = benchmark_model(name)
            keys |= {t.key for t in extract_tasks(lower_for_tuning(model, target, example_inputs=inputs), target)}
        with tempfile.TemporaryDirectory() as tmp:
            dbm.select_workloads(work, Path(tmp) / "new", lambda k: k not in keys)
            kept = dbm.select_workloads(args.keep_from, Path(tmp) / "kept", lambda k: k in keys)
            rep = dbm.import_database(Path(tmp) / "new", out, target, top_k=KEEP_TOP)
            more = dbm.import_database(Path(tmp) / "kept", out, target, top_k=KEEP_TOP)
            rep.records_added += more.records_added
            rep.workloads_added += more.workloads_added
        print(f"{', '.join(keep_models)}: {kept} record(s) of {len(keys)} workload(s) kept from {args.keep_from}")
    else:
        rep = dbm.import_database(work, out, target, top_k=KEEP_TOP)
    print(f"tuning wall time {elapsed / 60:.1f} min; shipped {rep.records_added} records "
          f"({rep.workloads_added} workloads, best {KEEP_TOP} each) to {out}")
    for name, r in summary:
        tuned = sum(t.best is not None for t in r.tasks)
        est = r.estimated_latency_s
        print(f"  {name}: {tuned}/{len(r.tasks)} tasks tuned, {r.trials_new} trials, {r.elapsed_s / 60:.1f} min, "
              f"estimated {est * 1e3:.3f} ms" if est else f"  {name}: nothing measured")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
