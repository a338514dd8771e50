"""Tuning hwcomp's own kernels: a small cost-model-guided search over their knobs.

MetaSchedule searches a generic space (thousands of candidates to converge). hwcomp's
:class:`~hwcomp.schedules.cpu.rules.TiledReduction` has four knobs (register tile rows ``mr``,
column vectors ``nr_vectors``, reduction block ``kc``, loop order ``panel_outer``); a few dozen
measured points are enough to find a good setting. The search measures the default knobs and a
random handful first, then repeatedly fits an XGBoost regressor on (knob features → log time) and
measures the candidates it predicts fastest (plus one random, to keep exploring). Knob sets that
produce the same schedule are measured once.

Measurements are appended to ``hwcomp_knobs.json`` in the database directory as they are taken, so
an interrupted search resumes where it stopped. The entries, and the rule that applies the best
stored knobs at build, are :mod:`hwcomp.records.knobs`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import error_line
from ..records.knobs import (  # noqa: F401 (best_knobs, knob_types: re-exported)
    CONV_KERNEL,
    KERNEL,
    append_knob_entry,
    best_knobs,
    kernel_of,
    kernel_types,
    knob_types,
    read_knob_entries,
    rule_for,
)
from ..records.locations import target_signature
from ..target import Target
from .tasks import Task

#: The TiledReduction knob space (160 points; many collapse to the same schedule for a given shape).
SPACE = {
    "mr": (1, 2, 4, 6, 8),
    "nr_vectors": (1, 2, 3, 4),
    "kc": (0, 64, 128, 256),
    "panel_outer": (True, False),
}
#: The BlockedConv knob space: output pixels per register tile, kernel-column unrolling.
CONV_SPACE = {
    "reg_n": (2, 3, 4, 5, 6, 7, 8),
    "unroll_kw": (False, True),
}


def kernel_for(func, target: Target) -> str:
    """Which of hwcomp's kernels schedules ``func``: the blocked convolution where it applies."""
    from hwcomp.schedules.cpu import BlockedConv

    conv = BlockedConv(target.vector_bits, registers=target.vector_registers)
    return CONV_KERNEL if conv.apply(func, target.tvm_target(), False) is not None else KERNEL


def is_window_reduction(func, target: Target) -> bool:
    """Whether ``func`` is a pooling function (``schedules/cpu/pool.py``'s rule takes it)."""
    from hwcomp.schedules.cpu.pool import WindowReduction

    return WindowReduction(target.vector_bits).apply(func, target.tvm_target(), False) is not None


def default_knobs(kernel: str = KERNEL):
    return kernel_types()[kernel]()


def knob_space(kernel: str = KERNEL) -> list:
    cls = kernel_types()[kernel]
    space = CONV_SPACE if kernel == CONV_KERNEL else SPACE
    return [cls(*v) for v in itertools.product(*space.values())]


def _features(knobs, lanes: int) -> list[float]:
    if kernel_of(knobs) == CONV_KERNEL:
        return [float(knobs.reg_n), float(knobs.unroll_kw)]
    nr = knobs.nr_vectors * lanes
    return [math.log2(knobs.mr), knobs.nr_vectors, math.log2(knobs.kc) if knobs.kc else 0.0,
            float(knobs.panel_outer), knobs.mr * knobs.nr_vectors, math.log2(knobs.mr * nr),
            (knobs.kc or 1024) * nr * 4 / 32768]


def hwcomp_schedule(task: Task, target: Target, directory: Path | None = None):
    """The module compile builds for ``task`` when no MetaSchedule record covers it: the best knobs
    stored in ``directory``, else the target's default rules (as ``hwcomp.build.schedule`` applies
    them, the panel prefetch included)."""
    import tvm
    from tvm.s_tir import dlight as dl

    from hwcomp.schedules.cpu import default_rules

    from ..records.knobs import stored_knob_rules

    rules = stored_knob_rules(directory, target) + default_rules(target.cpu_caps)
    with target.tvm_target():
        # a module of its own: the pass replaces functions in the module it is given, and
        # ``task.mod`` must stay the unscheduled workload
        return dl.ApplyDefaultSchedule(*rules)(tvm.IRModule({"main": task.func}))


def schedule_with(func, knobs, target: Target):
    """hwcomp's schedule of ``func`` with ``knobs`` (None when that kernel does not apply)."""
    return rule_for(knobs, target.cpu_caps).apply(
        func, target.tvm_target(), False)


# ----------------------------------------------------------------------------- search


@dataclasses.dataclass
class KnobResult:
    task: str
    workload: str
    trials: int = 0  # measured in this run
    previous: int = 0  # measured before (resumed)
    best_secs: float | None = None
    best_knobs: object | None = None
    default_secs: float | None = None
    applicable: bool = True


def measure_rounds(mods: list, target: Target, builder, runner,
                   rounds: int = 1) -> list[tuple[list[list[float]] | None, str | None]]:
    """Build scheduled single-function modules once with MetaSchedule's builder, then time all of them
    ``rounds`` times in turn with its runner (interleaved: a slow spell of the machine hits every
    module alike). Per module: its ``run_secs`` of each round, or None and the error."""
    from tvm.s_tir import meta_schedule as ms

    from .workers import remove_builds

    tvm_target = target.tvm_target()
    built = builder.build([ms.builder.BuilderInput(m, tvm_target) for m in mods])
    inputs, where = [], []
    per_round: list[list[list[float]] | None] = [None] * len(mods)
    errors: list[str | None] = [None] * len(mods)
    device = "cuda" if target.is_gpu else "cpu"
    for i, (m, b) in enumerate(zip(mods, built)):
        if b.error_msg:
            errors[i] = "build: " + error_line(str(b.error_msg), limit=200)
            continue
        args = ms.arg_info.ArgInfo.from_entry_func(m, remove_preproc=True)
        inputs.append(ms.runner.RunnerInput(b.artifact_path, device, args))
        where.append(i)
        per_round[i] = []
    try:
        for _ in range(rounds):
            for i, fut in zip(where, runner.run(inputs) if inputs else []):
                r = fut.result()
                if per_round[i] is None:  # failed in an earlier round
                    continue
                if r.error_msg:
                    per_round[i], errors[i] = None, "run: " + error_line(str(r.error_msg), limit=200)
                else:
                    per_round[i].append([float(s) for s in r.run_secs])
    finally:
        remove_builds(built)
    return list(zip(per_round, errors))


def measure(mods: list, target: Target, builder, runner) -> list[tuple[list[float] | None, str | None]]:
    """Build and time scheduled single-function modules once (see :func:`measure_rounds`)."""
    return [(secs[0] if secs else None, err) for secs, err in measure_rounds(mods, target, builder, runner)]


def commit_schedule(database, task: Task, sch, secs: float, target: Target) -> None:
    """Store ``sch``, a schedule of ``task``, in a MetaSchedule ``database`` as a record timed at ``secs``.

    A record is the schedule's trace, replayed on the workload when compile applies it. A schedule
    its trace does not reproduce (one edited as text, e.g. TiledReduction's panel prefetch) would be
    served as whatever the replay gives (an empty trace is never served at all): refused with
    ValueError. The tuner stores no schedules of its
    own; it records which side wins (:mod:`hwcomp.records.served`)."""
    import tvm
    import tvm_ffi
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    replay = s_tir.Schedule(task.mod)
    sch.trace.apply_to_schedule(replay, remove_postproc=False)
    if not tvm_ffi.structural_equal(replay.mod["main"], sch.mod["main"], map_free_vars=True):
        raise ValueError(f"{task.name}: the schedule is not what its trace replays to; not stored as a record")

    workload = database.commit_workload(task.mod)
    database.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, workload, [tvm.tirx.FloatImm("float32", secs)], target.tvm_target(),
        ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)))


def tune_knobs(task: Task, target: Target, directory: Path, builder, runner, trials: int = 24, batch: int = 6,
               seed: int = 0, deadline: float | None = None,
               on_batch: Callable[[KnobResult, int], None] | None = None) -> KnobResult:
    """Search the knobs of the hwcomp kernel that schedules one task (:func:`kernel_for`); append every measurement to ``hwcomp_knobs.json``.

    Resumes: knob sets already measured for this workload are not measured again and count
    towards ``trials``. ``deadline`` (``time.monotonic()`` value): stop between batches.
    """
    import numpy as np
    import tvm_ffi

    res = KnobResult(task.name, task.key)
    func = task.func
    if is_window_reduction(func, target):
        # pooling has its own rule and no knobs; a TiledReduction record would replace it
        res.applicable = False
        return res
    kernel = kernel_for(func, target)
    default = default_knobs(kernel)
    # Distinct schedules only: many knob sets collapse for a given shape (divisors, kc ≥ K, ...).
    by_schedule: dict[int, object] = {}
    cands: list = []
    mods: dict = {}
    for k in [default, *knob_space(kernel)]:
        sch = schedule_with(func, k, target)
        if sch is None:
            if k is default:
                res.applicable = False
                return res
            continue
        h = tvm_ffi.structural_hash(sch.mod)
        if h in by_schedule:
            continue
        by_schedule[h] = k
        cands.append(k)
        mods[k] = sch.mod
    sig = target_signature(target)
    measured: dict = {}
    for e in read_knob_entries(directory, target):
        if e.workload == task.key and e.knobs in mods:
            measured[e.knobs] = e.secs
    res.previous = len(measured)
    for k, s in measured.items():
        if s is not None and (res.best_secs is None or s < res.best_secs):
            res.best_secs, res.best_knobs = s, k
    res.default_secs = measured.get(default)
    budget = min(trials, len(cands)) - len(measured)
    rng = random.Random(seed)
    lanes = max(target.vector_bits // 32, 1)
    while budget > 0 and (deadline is None or time.monotonic() < deadline):
        todo = [k for k in cands if k not in measured]
        if not todo:
            break
        n = min(batch, budget, len(todo))
        if default not in measured:
            pick = [default] + rng.sample([k for k in todo if k != default], min(n - 1, len(todo) - 1))
        elif len([s for s in measured.values() if s is not None]) < 4:
            pick = rng.sample(todo, n)
        else:
            pick = _predict_best(measured, todo, lanes, n - 1, seed + len(measured))
            rest = [k for k in todo if k not in pick]
            pick += rng.sample(rest, min(1, len(rest)))
        results = measure([mods[k] for k in pick], target, builder, runner)
        for k, (secs, err) in zip(pick, results):
            mean = sum(secs) / len(secs) if secs else None
            measured[k] = mean
            append_knob_entry(directory, task.key, task.name, k, secs, err, sig)
            res.trials += 1
            if k == default:
                res.default_secs = mean
            if mean is not None and (res.best_secs is None or mean < res.best_secs):
                res.best_secs, res.best_knobs = mean, k
        budget -= len(pick)
        if on_batch:
            on_batch(res, len(pick))
    del np
    return res


def measure_defaults(tasks: list[Task], target: Target, directory: Path, builder, runner) -> dict[str, float | None]:
    """Time hwcomp's untuned schedule (default knobs) of each task, in one batch; store it as a knob entry.

    This is what compile would use without the database: :func:`~hwcomp.tune.tuner.tune` keeps a
    MetaSchedule record only where it beats this baseline. Tasks already measured are skipped.
    """
    known = {e.workload: e.secs for e in read_knob_entries(directory, target)
             if e.knobs == default_knobs(kernel_of(e.knobs))}
    out: dict[str, float | None] = {k: v for k, v in known.items() if k in {t.key for t in tasks}}
    todo, mods = [], []
    for t in tasks:
        if t.key in known:
            continue
        sch = schedule_with(t.func, default_knobs(kernel_for(t.func, target)), target)
        if sch is not None:
            todo.append(t)
            mods.append(sch.mod)
    if not mods:
        return out
    sig = target_signature(target)
    for t, (secs, err) in zip(todo, measure(mods, target, builder, runner)):
        mean = sum(secs) / len(secs) if secs else None
        out[t.key] = mean
        append_knob_entry(directory, t.key, t.name, default_knobs(kernel_for(t.func, target)), secs, err, sig)
    return out


def _predict_best(measured: dict, todo: list, lanes: int, n: int, seed: int) -> list:
    """The ``n`` unmeasured knob sets an XGBoost regressor on the measured ones predicts fastest."""
    import numpy as np
    import xgboost as xgb

    pts = [(k, s) for k, s in measured.items() if s is not None]
    x = np.array([_features(k, lanes) for k, _ in pts])
    y = np.log(np.array([s for _, s in pts]))
    model = xgb.XGBRegressor(n_estimators=60, max_depth=3, learning_rate=0.3, subsample=1.0, random_state=seed,
                             n_jobs=1, verbosity=0)
    model.fit(x, y)
    pred = model.predict(np.array([_features(k, lanes) for k in todo]))
    order = np.argsort(pred)
    return [todo[i] for i in order[:max(n, 0)]]
