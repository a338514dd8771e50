"""``hwcomp tune``: MetaSchedule with the XGBoost cost model over a model's tasks, resumable.

* Tasks are the fused PrimFuncs of the model *as it will be compiled* (after the compression passes,
  weight folding and legalization under the target: :mod:`hwcomp.tune.tasks`).
* Records go to the target's database directory as they are measured (MetaSchedule appends one line
  per candidate after every batch), so killing the tuner loses at most the batch in flight.
* Running the same command again continues: the records already in the database count against the
  trial budget (per workload and in total), and MetaSchedule's evolutionary search starts from the
  best of them.
* ``time_budget_s`` is checked between rounds (a round = one batch of one task): tuning stops
  before a round that would likely overrun it.
* ``method="knobs"`` tunes hwcomp's own TiledReduction kernel instead (a few dozen measurements per
  task, :mod:`hwcomp.tune.knobs`); ``"both"`` runs it first, then MetaSchedule, and keeps whichever
  schedule measured faster for each task.
* With ``rpc_tracker``/``rpc_key`` candidates are built here and timed on the devices registered at
  the tracker under that key, one at a time per device, in parallel across devices.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import HwcompError
from ..records.formats import workload_stats
from ..records.locations import this_cpu, user_database_dir
from ..records.store import note_cpus, write_meta
from ..records.validate import ValidationReport, open_database, validate_database
from ..target import Target, get_target
from .database import seed_from_shipped
from .rounds import Progress, fmt_us, ms_callback, ms_scheduler
from .tasks import Task, extract_tasks, lower_for_tuning, tune_contexts

METHODS = ("metaschedule", "knobs", "both")


def parse_duration(text: str | None) -> float | None:
    """``90``, ``90s``, ``30m``, ``1h30m``, ``2h`` → seconds (for ``time_budget_s``)."""
    if text is None:
        return None
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != t.replace(" ", ""):
        raise HwcompError(f"bad duration {text!r}: use e.g. 90s, 30m, 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


@dataclasses.dataclass
class TaskReport:
    """Per-task outcome. Times in seconds; ``share``: of the estimated end-to-end time."""

    name: str
    key: str
    weight: float
    flop: float
    trials_before: int = 0
    trials_new: int = 0
    ms_best: float | None = None
    knob_trials: int = 0
    knob_best: float | None = None
    knob_default: float | None = None
    knob_record: bool = False  # the database's best record is hwcomp's knob schedule
    share: float | None = None

    @property
    def trials(self) -> int:
        return self.trials_before + self.trials_new + self.knob_trials

    @property
    def best(self) -> float | None:
        """The time of what compile will use: the database's best record, else the stored knobs."""
        return self.ms_best if self.ms_best is not None else self.knob_best

    @property
    def source(self) -> str:
        if self.best is None:
            return "-"
        return "knobs" if self.ms_best is None or self.knob_record else "metaschedule"

    @property
    def gflops(self) -> float | None:
        return self.flop / self.best / 1e9 if self.best else None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(trials=self.trials, best=self.best, source=self.source, gflops=self.gflops)
        return d


@dataclasses.dataclass
class TuneResult:
    target: str
    db_dir: Path
    method: str
    tasks: list[TaskReport]
    trials_new: int
    elapsed_s: float
    stopped: str  # "done", "trial budget reached", "time budget", "interrupted", "nothing to tune"
    fleet: str = "this machine"
    validation: ValidationReport | None = None
    confirmations: list = dataclasses.field(default_factory=list)  # hwcomp.tune.confirm.Confirmation
    in_model: object = None  # hwcomp.tune.in_model.InModelCheck, where it ran

    @property
    def estimated_latency_s(self) -> float | None:
        known = [t for t in self.tasks if t.best is not None]
        return sum(t.weight * t.best for t in known) if known else None

    def table(self) -> str:
        rows = [("task", "weight", "trials", "best (us)", "GFLOP/s", "share", "from")]
        for t in sorted(self.tasks, key=lambda t: -(t.weight * (t.best or 0))):
            rows.append((t.name[:40], f"{t.weight:g}", str(t.trials),
                         f"{t.best * 1e6:.1f}" if t.best else "-",
                         f"{t.gflops:.1f}" if t.gflops else "-",
                         f"{t.share * 100:.1f}%" if t.share is not None else "-", t.source))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(v.rjust(w) if 0 < i < 6 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        est = self.estimated_latency_s
        lines.append("-" * len(lines[0]))
        missing = sum(t.best is None for t in self.tasks)
        lines.append(f"estimated end-to-end: {est * 1e3:.3f} ms" if est is not None else "estimated end-to-end: -")
        if missing:
            lines[-1] += f" (+ {missing} task(s) not measured)"
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"target": self.target, "db_dir": str(self.db_dir), "method": self.method,
                "trials_new": self.trials_new, "elapsed_s": self.elapsed_s, "stopped": self.stopped,
                "fleet": self.fleet, "estimated_latency_s": self.estimated_latency_s,
                "tasks": [t.to_dict() for t in self.tasks],
                "in_model": self.in_model.to_dict() if self.in_model is not None else None}


DEFAULT_TRIALS = 64  # without a time budget
UNLIMITED_TRIALS = 1_000_000  # with one: stop on time, not on a count


def confirm_reserve_s(opts: TuneOptions, tasks: int) -> float:
    """Seconds of a time budget kept for the confirmation step: ~2.5 s per task measured on the 2-core
    machine (Swin-T, 89 tasks with records: 233 s), at most a quarter of the budget."""
    if not opts.time_budget_s or not opts.confirm:
        return 0.0
    return min(0.25 * opts.time_budget_s, 2.5 * tasks)


def trial_budget(opts: TuneOptions) -> int:
    """The MetaSchedule trial count a run aims for: ``opts.trials`` when given, else 64 without a
    time budget and no limit with one (a 20-minute budget over a 100-task model must not stop after
    64 trials)."""
    if opts.trials is not None:
        return opts.trials
    return DEFAULT_TRIALS if not opts.time_budget_s else UNLIMITED_TRIALS


@dataclasses.dataclass
class TuneOptions:
    """Settings of :func:`tune` (defaults: a 64-trial MetaSchedule run measured on this machine)."""

    trials: int | None = None
    """MetaSchedule measurements for the whole model, records already in the database included
    (re-running continues up to this total). None: 64, or no limit when ``time_budget_s`` is given
    (the budget decides how far the search gets)."""
    time_budget_s: float | None = None
    """Stop between rounds so as not to exceed this many seconds (None: no time limit)."""
    db_dir: str | Path | None = None
    """Where records go (None: the user's database of the target, seeded from the shipped records)."""
    passes: Sequence[Callable] = ()
    """The compression passes compile will run (tasks must match what is compiled)."""
    rpc_tracker: str | tuple[str, int] | None = None
    """RPC tracker (``HOST:PORT`` or ``(host, port)``) whose devices time the candidates (None: this machine)."""
    rpc_key: str | None = None
    """Device key at ``rpc_tracker``."""
    example_inputs: object = None
    """Example inputs of the model (for models that need them to be imported)."""
    input_shapes: dict | None = None
    """Input shapes of the model (for models that need them to be imported)."""
    method: str = "metaschedule"
    """``"metaschedule"``, ``"knobs"`` (hwcomp's TiledReduction knobs) or ``"both"`` (see the module docstring)."""
    trials_per_round: int = 16
    """MetaSchedule candidates measured per round (one batch of one task)."""
    max_trials_per_task: int | None = None
    """Like ``trials``, per workload (None: ``trials``)."""
    knob_trials: int = 24
    """Knob measurements per task (``method`` ``"knobs"`` or ``"both"``)."""
    task_names: Sequence[str] | None = None
    """Tune only tasks whose name contains one of these strings (others are reported); None: all."""
    cost_model: str = "xgb"
    """``"xgb"`` (MetaSchedule's XGBoost model) or ``"random"`` (random scores: the evolutionary search
    without a model, an ablation)."""
    search: str = "evolutionary"
    """``"evolutionary"`` (MetaSchedule's default) or ``"random"`` (each candidate sampled independently
    from the design space, no model: plain random search, the baseline a cost model is judged against)."""
    population: int | None = None
    """Population of the evolutionary search (None: hwcomp's default)."""
    seed: int | None = None
    """Random seed of the search and the task scheduler (None: not seeded)."""
    progress: bool = True
    """Show a progress bar."""
    seed_from_shipped_records: bool = True
    """Seed the user's database from the records shipped for the target (only when ``db_dir`` is None)."""
    baseline: bool = True
    """Also time hwcomp's untuned schedule of each tuned task and store it as the task's record when
    MetaSchedule did not beat it (compile then never gets slower than untuned)."""
    confirm: bool = True
    """Finally re-measure each task's best records against the default schedule, in interleaved rounds,
    and store the re-measured times (:mod:`hwcomp.tune.confirm`): the best of hundreds of single noisy
    measurements is otherwise mostly a lucky one."""
    in_model_check: bool = True
    """After the confirmation, where the model runs on this machine, time every kernel inside the model
    untuned and with the records, and hand back to hwcomp's schedule the workloads whose record loses
    there (:mod:`hwcomp.tune.in_model`): a kernel timed alone can win and still lose in place."""
    builder_timeout_s: float = 120.0
    """Build timeout per candidate."""
    runner_timeout_s: float = 60.0
    """Run timeout per candidate."""


def tune(model, target: str | Target = "host", options: TuneOptions | None = None,
         log: Callable[[str], None] | None = print) -> TuneResult:
    """Tune ``model`` for ``target``; records go to ``options.db_dir`` (default: the user's database of the target).

    ``options``: a :class:`TuneOptions` (None: the defaults). The target is resolved here, once; what
    runs below gets the :class:`~hwcomp.target.Target`. See the module docstring for ``method`` and
    the RPC fleet. Returns a :class:`TuneResult` (``result.table()`` is the summary printed at the end).
    """
    from .workers import (
        lean_workers,
        make_builder,
        make_runner,
        resolve_fleet,
        target_intrinsics,
    )

    opts = options or TuneOptions()
    log = log or (lambda s: None)
    if opts.method not in METHODS:
        raise HwcompError(f"unknown tuning method {opts.method!r}; use one of {', '.join(METHODS)}")
    if opts.cost_model not in ("xgb", "random"):
        raise HwcompError(f"unknown cost model {opts.cost_model!r}; use xgb or random")
    if opts.search not in ("evolutionary", "random"):
        raise HwcompError(f"unknown search {opts.search!r}; use evolutionary or random")
    if opts.trials is not None and opts.trials < 0:
        raise HwcompError("trials must be ≥ 0")
    opts = dataclasses.replace(opts, trials=trial_budget(opts))
    t_start = time.monotonic()
    deadline = t_start + opts.time_budget_s if opts.time_budget_s else None
    target = get_target(target)
    if target.is_gpu:
        raise HwcompError("hwcomp tune supports CPU targets (llvm) for now")
    db = Path(opts.db_dir) if opts.db_dir else user_database_dir(target)
    db.mkdir(parents=True, exist_ok=True)
    write_meta(db, target)
    if opts.seed_from_shipped_records and opts.db_dir is None:
        seed_from_shipped(db, target, log)
    validation = validate_database(db, target)
    if validation.issues:
        log(f"database check: {validation.summary()}")
    fleet = resolve_fleet(opts.rpc_tracker, opts.rpc_key)
    if not fleet.remote:  # measured here: compile elsewhere re-times these records before trusting them
        note_cpus(db, [this_cpu()])

    lowered = lower_for_tuning(model, target, opts.passes, opts.example_inputs, opts.input_shapes)
    tasks = extract_tasks(lowered, target)
    selected = [i for i, t in enumerate(tasks) if not opts.task_names or any(n in t.name for n in opts.task_names)]
    stats = workload_stats(validation.usable_dir)
    reports = []
    for t in tasks:
        st = stats.get(t.key)
        reports.append(TaskReport(t.name, t.key, t.weight, t.flop, trials_before=st.trials if st else 0,
                                  ms_best=st.best_secs if st else None))
    from ..records.knobs import best_knobs

    stored_knobs = best_knobs(db, target)
    for r in reports:
        if r.key in stored_knobs:
            r.knob_best = stored_knobs[r.key].secs
    what = Path(model).name if isinstance(model, (str, Path)) else type(model).__name__
    log(f"tuning {len(selected)} of {len(tasks)} task(s) of {what} for {target.name} ({opts.method}); "
        f"database {db}; measuring on {fleet.describe()}")
    result = TuneResult(target.name, db, opts.method, reports, 0, 0.0, "done", fleet.describe(), validation)
    if not selected:
        result.stopped = "nothing to tune"
        _finish(result, t_start, log)
        return result

    cross = target.cross_compiler if target.arch != _machine() else None
    # The last run's logs stay with the database they describe, not in a new /tmp folder per run.
    log_dir = str(db / "logs")
    knobs_kept = False
    try:
        with lean_workers(), target_intrinsics(target):
            builder = make_builder(cross, opts.builder_timeout_s)
            runner = make_runner(fleet, opts.runner_timeout_s)

            # The confirmation step runs after the search and counts against the budget too.
            search_deadline = deadline - confirm_reserve_s(opts, len(selected)) if deadline is not None else None
            run = _TuneRun(tasks, reports, selected, target, db, builder, runner, opts, search_deadline, log_dir,
                           result, log)
            if opts.method in ("knobs", "both"):
                _tune_knobs_phase(run)

            if opts.method in ("metaschedule", "both") and result.stopped != "time budget":
                _tune_ms_phase(run)
            if opts.method in ("metaschedule", "both") and opts.baseline:
                # The untuned schedule compile would otherwise use: a record must beat it to be served.
                from .knobs import measure_defaults

                tuned = [tasks[i] for i in selected if reports[i].ms_best is not None]
                for key, secs in measure_defaults(tuned, target, db, builder, runner).items():
                    rep = next(r for r in reports if r.key == key)
                    rep.knob_default = secs
                    if secs is not None and (rep.knob_best is None or secs < rep.knob_best):
                        rep.knob_best = secs
            if opts.method == "both" or opts.baseline:
                _keep_faster_knobs(tasks, reports, target, db, log)
                knobs_kept = True
            if opts.confirm and result.stopped != "interrupted":
                _confirm_phase(run)
                if opts.in_model_check and not fleet.remote and target.runs_here() \
                        and opts.method in ("metaschedule", "both"):
                    _in_model_phase(run, model)
    except KeyboardInterrupt:
        result.stopped = "interrupted"
        log("interrupted: every record measured so far is in the database; run the same command to continue")

    if (opts.method == "both" or opts.baseline) and not knobs_kept:
        _keep_faster_knobs(tasks, reports, target, db, log)
    log(f"tuning logs: {log_dir}")
    _finish(result, t_start, log)
    return result


def _machine() -> str:
    import platform

    return platform.machine()


@dataclasses.dataclass(frozen=True)
class _TuneRun:
    """What the phases of one :func:`tune` call share: the tasks and their reports, the selected
    task indices, where records go, the builder and runner, the options and the deadline."""

    tasks: list[Task]
    reports: list[TaskReport]
    selected: list[int]
    target: Target
    db: Path
    builder: object
    runner: object
    opts: TuneOptions
    deadline: float | None
    log_dir: str
    result: TuneResult
    log: Callable[[str], None]


def _tune_knobs_phase(run: _TuneRun) -> None:
    from .knobs import tune_knobs

    tasks, reports, selected, target, db = run.tasks, run.reports, run.selected, run.target, run.db
    builder, runner, opts, deadline, result = run.builder, run.runner, run.opts, run.deadline, run.result
    knob_trials, progress = opts.knob_trials, opts.progress
    order = sorted(selected, key=lambda i: -(tasks[i].flop * tasks[i].weight))
    bar = Progress(reports, knob_trials * len(order), progress, deadline, "knobs")
    try:
        for i in order:
            if bar.out_of_time():
                result.stopped = "time budget"
                break
            rep = reports[i]

            def on_batch(kr, n, rep=rep):
                rep.knob_best = kr.best_secs
                bar.step(rep, n)

            kr = tune_knobs(tasks[i], target, db, builder, runner, trials=knob_trials, deadline=deadline,
                            on_batch=on_batch)
            if not kr.applicable:
                bar.bar.total = max(bar.bar.total - knob_trials, 0)
                continue
            rep.knob_trials = kr.previous + kr.trials
            rep.knob_best = kr.best_secs
            rep.knob_default = kr.default_secs
            result.trials_new += kr.trials
            bar.done.add(i)
    finally:
        bar.close()


def _tune_ms_phase(run: _TuneRun) -> None:
    from tvm.s_tir import meta_schedule as ms

    tasks, reports, selected, target, db = run.tasks, run.reports, run.selected, run.target, run.db
    builder, runner, opts, deadline, result = run.builder, run.runner, run.opts, run.deadline, run.result
    log_dir, log = run.log_dir, run.log
    trials, max_trials_per_task, trials_per_round = opts.trials, opts.max_trials_per_task, opts.trials_per_round
    population, seed, progress = opts.population, opts.seed, opts.progress
    cost_model_kind, search = opts.cost_model, opts.search
    cap = max_trials_per_task or trials
    done_before = sum(min(reports[i].trials_before, cap) for i in selected)
    remaining = trials - done_before
    # Heaviest first: the first round of each task runs in this order, so a short time budget still
    # reaches the tasks that matter.
    todo = sorted((i for i in selected if reports[i].trials_before < cap), key=lambda i: -tasks[i].flop * tasks[i].weight)
    if remaining <= 0 or not todo:
        log(f"already tuned: {done_before} trials in the database for these tasks (asked for {trials}); "
            "ask for more --trials to continue")
        if result.stopped == "done":
            result.stopped = "trial budget reached"
        return
    if done_before:
        log(f"resuming: {done_before} trials already in the database, {remaining} to go")
    sub = [tasks[i] for i in todo]
    ctxs = tune_contexts(sub, target, log_dir, population=population, seed=seed, search=search)
    caps = [cap for _ in todo]
    database = open_database(db, target, validate=False)
    # MetaSchedule's default waits for 100 measurements before the model predicts anything (it is
    # made for thousands of trials); hwcomp's budgets are small, so the model starts after one round.
    cost_model = (ms.cost_model.XGBModel(num_warmup_samples=max(8, min(trials_per_round, 32)), num_tuning_cores=1)
                  if cost_model_kind == "xgb" and search == "evolutionary" else ms.cost_model.RandomModel(seed=seed))
    bar = Progress(reports, remaining, progress, deadline, "tuning")
    n_before = sum(r.trials_new for r in reports)
    try:
        ms.tune_tasks(
            tasks=ctxs, task_weights=[tasks[i].weight for i in todo], work_dir=log_dir,
            max_trials_global=remaining, max_trials_per_task=cap, num_trials_per_iter=trials_per_round,
            builder=builder, runner=runner, database=database, cost_model=cost_model,
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), ms_callback(bar, todo)],
            task_scheduler=ms_scheduler(bar, todo, caps, seed),
        )
    finally:
        bar.close()
        result.trials_new += sum(r.trials_new for r in reports) - n_before
    if bar.stopped_by_budget:
        result.stopped = "time budget"
    elif sum(min(reports[i].trials_before + reports[i].trials_new, cap) for i in selected) >= trials:
        result.stopped = "trial budget reached"


def _confirm_phase(run: _TuneRun) -> None:
    from .confirm import confirm_records

    tasks, reports, selected, target, db = run.tasks, run.reports, run.selected, run.target, run.db
    builder, runner, result, log = run.builder, run.runner, run.result, run.log
    chosen = [tasks[i] for i in selected]
    result.confirmations = confirm_records(chosen, target, db, builder, runner, log=log)
    by_name = {c.task: c for c in result.confirmations}
    for i in selected:
        c = by_name.get(tasks[i].name)
        if c is None or c.confirmed is None:
            continue
        r = reports[i]
        r.ms_best, r.knob_record = c.confirmed, c.winner == "default"


def _in_model_phase(run: _TuneRun, model) -> None:
    """The in-model check (:mod:`hwcomp.tune.in_model`). A model it cannot compile (a bare TIR
    module, an import that needs what only the tuner was given) skips it, said in one line: the
    records and verdicts measured so far stay."""
    from ..errors import error_line
    from .in_model import check_in_model

    opts, result, log = run.opts, run.result, run.log
    try:
        result.in_model = check_in_model(model, run.target, run.db, passes=opts.passes,
                                         example_inputs=opts.example_inputs, input_shapes=opts.input_shapes, log=log)
    except Exception as e:  # noqa: BLE001 - an optional last check must not undo the tuning
        log(f"in-model check skipped: {error_line(e, with_type=True, limit=160)}")
        return
    defaults = {c.task: c.default for c in result.confirmations}
    for r in run.reports:  # the summary: hwcomp's schedule serves these now, at its time alone
        if r.name in result.in_model.flipped:
            r.knob_record = True
            r.ms_best = defaults.get(r.name) or r.ms_best


def _keep_faster_knobs(tasks: list[Task], reports: list[TaskReport], target: Target, db: Path, log) -> None:
    """Where hwcomp's knobs beat MetaSchedule's best, record the verdict (``hwcomp_served.json``) so
    that compile leaves the workload's records out and builds the stored knobs (the confirmation
    step, when it runs, re-times both sides and has the last word)."""
    from ..records.knobs import best_knobs, knobs_str
    from ..records.served import HWCOMP, verdict, verdicts

    table = best_knobs(db, target)
    found = {}
    for t, r in zip(tasks, reports):
        e = table.get(t.key)
        # Without MetaSchedule records compile serves the stored knobs already (StoredKnobs).
        if e is None or e.secs is None or r.ms_best is None or r.ms_best <= e.secs:
            continue
        found[t.key] = verdict(HWCOMP, t.name, e.secs, r.ms_best)
        log(f"{t.name}: hwcomp's schedule ({fmt_us(e.secs)}, knobs {knobs_str(e.knobs)}) beats MetaSchedule's "
            f"({fmt_us(r.ms_best)}); compile will serve it")
        r.ms_best, r.knob_record = e.secs, True
    verdicts(db).add(found, replace=True)


def _finish(result: TuneResult, t_start: float, log) -> None:
    result.elapsed_s = time.monotonic() - t_start
    est = result.estimated_latency_s
    for t in result.tasks:
        t.share = (t.weight * t.best / est) if (est and t.best is not None) else None
    log(result.table())
    log(f"{result.trials_new} new trial(s) in {result.elapsed_s:.0f} s ({result.stopped}); records in {result.db_dir}")
