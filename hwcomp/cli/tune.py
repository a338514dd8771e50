"""``hwcomp tune`` and ``hwcomp db``: argument parsing only; the work is in :mod:`hwcomp.tune.tuner` /
:mod:`hwcomp.tune.database`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import HwcompError
from .args import (
    _print,
    add_input_shape_argument,
    add_model_target_arguments,
    add_sparse_arguments,
    check_model_file,
    check_output_path,
    check_sparse_args,
    host_port_type,
    positive_int,
    run_check,
)

# ----------------------------------------------------------------------------- hwcomp tune


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    add_model_target_arguments(p)
    p.add_argument("--trials", type=positive_int, default=None,
                   help="MetaSchedule measurements for the whole model, counting records already in the database "
                        "(re-running continues up to this total; default 64, or no limit with --time-budget)")
    p.add_argument("--time-budget", help="stop between rounds before this much time has passed (e.g. 30m, 1h)")
    p.add_argument("--db", help="database directory (default: ~/.cache/hwcomp/tuning/<target>)")
    p.add_argument("--method", choices=("metaschedule", "knobs", "both"), default="metaschedule",
                   help="MetaSchedule's search (XGBoost cost model), hwcomp's kernel knobs, or both (default: metaschedule)")
    p.add_argument("--trials-per-round", type=positive_int, default=16,
                   help="candidates measured per round (default 16)")
    p.add_argument("--max-trials-per-task", type=positive_int, help="cap per task (default: --trials)")
    p.add_argument("--knob-trials", type=positive_int, default=24,
                   help="knob sets measured per task with --method knobs/both")
    p.add_argument("--rpc-tracker", type=host_port_type, metavar="HOST:PORT",
                   help="measure on devices registered at this RPC tracker")
    p.add_argument("--rpc-key", metavar="KEY", help="the key the devices registered under")
    add_input_shape_argument(p)
    add_sparse_arguments(p, "tune the model as compiled with this weight sparsity, in [0, 1)")
    p.add_argument("--seed", type=int, help="random seed of the search")
    p.add_argument("--population", type=positive_int,
                   help="evolutionary search population (default 512; smaller is faster)")
    p.add_argument("--no-baseline", action="store_true",
                   help="do not time hwcomp's untuned schedule of each task (by default a MetaSchedule record is "
                        "only served where it beats it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", help="also write the summary as JSON to this file")


def check_tune_args(args) -> None:
    """What ``hwcomp tune`` can refuse before importing the model (one-line :class:`HwcompError`)."""
    from ..frontend import parse_input_shapes
    from ..target import get_target
    from ..tune.tuner import parse_duration

    check_model_file(args.model)
    parse_input_shapes(args.input_shape)
    check_sparse_args(args)
    parse_duration(args.time_budget)
    if bool(args.rpc_tracker) != bool(args.rpc_key):
        raise HwcompError("--rpc-tracker HOST:PORT and --rpc-key KEY go together")
    check_output_path(args.json, "--json")
    args._target = get_target(args.target)


def run_tune(args) -> int:
    from ..build_measure import bsr_latency
    from ..frontend import parse_input_shapes
    from ..passes.dense_to_bsr import sparse_passes_from_options
    from ..tune.tuner import TuneOptions, parse_duration, tune

    run_check(args, check_tune_args)
    target = args._target
    passes = sparse_passes_from_options(args, target, tune=True, log=_print, latency=bsr_latency(target))
    options = TuneOptions(
        trials=args.trials, time_budget_s=parse_duration(args.time_budget), db_dir=args.db,
        passes=passes, rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key,
        input_shapes=parse_input_shapes(args.input_shape), method=args.method,
        trials_per_round=args.trials_per_round, max_trials_per_task=args.max_trials_per_task,
        knob_trials=args.knob_trials, seed=args.seed, population=args.population, progress=not args.no_progress,
        baseline=not args.no_baseline,
    )
    result = tune(args.model, target, options, log=_print)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
        _print(f"wrote {args.json}")
    return 0


# ----------------------------------------------------------------------------- hwcomp db


def add_db_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="db_command", required=True)

    s = sub.add_parser("show", help="workloads, records and best times of a database")
    _where(s)

    s = sub.add_parser("check", help="validate a database: skip and report bad or foreign lines (originals kept as .bak)")
    _where(s)
    s.add_argument("--dry-run", action="store_true", help="report only, rewrite nothing")

    s = sub.add_parser("export", help="write a validated copy (directory or .tar.gz)")
    _where(s)
    s.add_argument("-o", "--output", required=True, help="output directory or .tar.gz")
    s.add_argument("--top-k", type=positive_int, help="keep only the best K records per workload")

    s = sub.add_parser("import", help="add the records of a database (directory or .tar.gz) to a target's database")
    s.add_argument("source")
    _where(s)
    s.add_argument("--force", action="store_true", help="also take records measured for another target signature")
    s.add_argument("--no-retarget", action="store_true", help="keep the records' own target")
    s.add_argument("--top-k", type=positive_int, help="only the best K records per workload")

    s = sub.add_parser("merge", help="merge several databases into one directory")
    s.add_argument("sources", nargs="+")
    s.add_argument("-o", "--output", required=True, help="destination directory")
    s.add_argument("-t", "--target", help="target the merged database is for (default: the first source's)")


def _where(s: argparse.ArgumentParser) -> None:
    s.add_argument("-t", "--target", default="host", help="target whose database to use (default host)")
    s.add_argument("--db", help="database directory (default: the target's user database)")


def _db_dir(args, for_reading: bool = True) -> tuple[Path, object]:
    from ..target import get_target
    from ..tune.database import default_database_dir, user_database_dir

    target = get_target(args.target)
    if args.db:
        return Path(args.db), target
    d = default_database_dir(target) if for_reading else user_database_dir(target)
    if d is None:
        raise HwcompError(f"no tuning database for {target.name} (run `hwcomp tune` first, or give --db)")
    return d, target


def run_db(args) -> int:
    import warnings

    from ..tune import database as dbm

    cmd = args.db_command
    if cmd == "merge":
        from ..target import get_target

        target = get_target(args.target) if args.target else None
        for rep in dbm.merge_databases(args.sources, args.output, target):
            _print(rep.summary())
        return 0
    if cmd == "import":
        dest, target = _db_dir(args, for_reading=False)
        rep = dbm.import_database(args.source, dest, target, retarget=not args.no_retarget, force=args.force,
                                  top_k=args.top_k)
        _print(rep.summary())
        return 0
    directory, target = _db_dir(args)
    if not directory.is_dir():
        raise HwcompError(f"no tuning database at {directory}")
    if cmd == "check":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dbm.TuningDatabaseWarning)
            rep = dbm.validate_database(directory, target if not args.db else None, rewrite=not args.dry_run)
        for issue in rep.issues:
            _print(f"skipped {directory / issue.file}:{issue.line}: {issue.reason}")
        _print(rep.summary())
        return 0 if rep.ok else 1
    if cmd == "export":
        out = dbm.export_database(directory, args.output, top_k=args.top_k)
        _print(f"exported {directory} → {out}")
        return 0
    if cmd == "show":
        return _show(directory, target)
    raise HwcompError(f"unknown db command {cmd!r}")


def _show(directory: Path, target) -> int:
    from ..tune import database as dbm
    from ..tune.knobs import best_knobs

    meta = dbm.read_meta(directory) or {}
    stats = dbm.workload_stats(directory)
    names = {}
    for line in (directory / dbm.KNOBS).read_text().splitlines() if (directory / dbm.KNOBS).is_file() else []:
        try:
            o = json.loads(line)
            names[o["workload"]] = o.get("task", "")
        except (ValueError, KeyError):
            pass
    _print(f"database  {directory}")
    _print(f"target    {meta.get('target', '?')} ({meta.get('signature', '?')})")
    from ..records.store import tuned_on

    _print(f"measured  on {', '.join(tuned_on(directory))} (compile re-times records from any other CPU)")
    _print(f"{len(stats)} workloads with MetaSchedule records, {sum(s.trials for s in stats.values())} records")
    for key, st in sorted(stats.items(), key=lambda kv: -(kv[1].best_secs or 0)):
        best = f"{st.best_secs * 1e6:10.1f} us" if st.best_secs else "         - "
        _print(f"  {key:>20}  {st.trials:5d} trials ({st.failed} failed)  best {best}  {names.get(key, '')}")
    knobs = best_knobs(directory)
    if knobs:
        _print(f"{len(knobs)} workloads with tuned hwcomp knobs")
        for key, e in knobs.items():
            _print(f"  {key:>20}  {e.secs * 1e6:10.1f} us  {e.knobs}  {e.task}")
    return 0
