"""One tuning round at a time: the progress bar, and the MetaSchedule measure callback and task
scheduler that apply hwcomp's stopping rules (per-task trial caps, the time budget) between rounds.

Used by :func:`hwcomp.tune.tuner.tune`; ``tasks`` here are its ``TaskReport`` objects.
"""

from __future__ import annotations

import time


def fmt_us(secs: float | None) -> str:
    return "-" if secs is None else f"{secs * 1e6:.0f}us" if secs < 1e-2 else f"{secs * 1e3:.1f}ms"


class Progress:
    """The tqdm bar and the per-round bookkeeping shared by the MetaSchedule callback and the knob search."""

    def __init__(self, tasks: list, total: int, show: bool, deadline: float | None, desc: str):
        from tqdm import tqdm

        self.tasks = tasks
        self.deadline = deadline
        self.last = time.monotonic()
        self.rounds: list[float] = []  # durations of the rounds so far
        self.done: set[int] = set()
        self.stopped_by_budget = False
        # A count that only the time budget bounds is no total to show progress against.
        shown = None if deadline is not None and total >= 100_000 else max(total, 0)
        self.bar = tqdm(total=shown, unit="trial", desc=desc, disable=not show, dynamic_ncols=True, leave=True)

    def e2e(self) -> str:
        known = [t for t in self.tasks if t.best is not None]
        if not known:
            return "-"
        s = f"{sum(t.weight * t.best for t in known) * 1e3:.3f}ms"
        return s if len(known) == len(self.tasks) else f"{s} ({len(known)}/{len(self.tasks)} tasks)"

    def step(self, task, n: int) -> None:
        now = time.monotonic()
        self.rounds.append(now - self.last)
        self.last = now
        self.bar.update(n)
        self.bar.set_postfix_str(f"tasks done {len(self.done)}/{len(self.tasks)} | {task.name[:28]} best "
                                 f"{fmt_us(task.best)} | e2e≈{self.e2e()}", refresh=True)

    def out_of_time(self) -> bool:
        """True when the next round would likely end after the deadline."""
        if self.deadline is None:
            return False
        # Rounds of different tasks differ a lot (a tiny task vs a big matmul): the longest recent
        # one is the estimate, so the budget is rarely overrun.
        if time.monotonic() + max(self.rounds[-4:], default=0.0) > self.deadline:
            self.stopped_by_budget = True
            return True
        return False

    def close(self) -> None:
        self.bar.close()


def ms_callback(progress: Progress, ms_index: list[int]):
    """Progress only: a measure callback must not terminate tasks (MetaSchedule's schedulers may
    already have picked them); stopping is :func:`ms_scheduler`'s job."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class _Callback(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            rep = progress.tasks[ms_index[task_id]]
            for b, r in zip(builder_results, runner_results):
                rep.trials_new += 1
                if b.error_msg is None and r.error_msg is None and r.run_secs:
                    secs = [float(s) for s in r.run_secs]
                    mean = sum(secs) / len(secs)
                    if rep.ms_best is None or mean < rep.ms_best:
                        rep.ms_best = mean
            progress.step(rep, len(measure_candidates))

    return _Callback()


def ms_scheduler(progress: Progress, ms_index: list[int], caps: list[int], seed: int | None,
                  alpha: float = 0.2, window: int = 3):
    """MetaSchedule's gradient-based task scheduler, with hwcomp's stopping rules.

    Same policy as ``GradientBased`` (each task once, then the task with the largest expected gain
    ``weight · (α·recent improvement + (1-α)·best/rounds)``), but it joins the round in flight before
    choosing, so that between two rounds it can stop at a per-task trial cap that counts the records
    already in the database, and return "no more tasks" when the time budget would be exceeded.
    """
    import random

    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

    @derived_object
    class _Scheduler(PyTaskScheduler):
        def __init__(self):
            super().__init__()
            self.last: int | None = None
            self.visited: set[int] = set()
            self.history: dict[int, list[float]] = {}
            self.rng = random.Random(seed)

        def next_task_id(self) -> int:
            outer = self._outer()
            tasks = outer.tasks_
            if self.last is not None and not tasks[self.last].is_terminated:
                _ffi_api.TaskSchedulerJoinRunningTask(outer, self.last)  # runs the measure callbacks
                rep = progress.tasks[ms_index[self.last]]
                if rep.ms_best is not None:
                    self.history.setdefault(self.last, []).append(rep.ms_best)
                if rep.trials_before + rep.trials_new >= caps[self.last]:
                    _ffi_api.TaskSchedulerTerminateTask(outer, self.last)
            for i, t in enumerate(tasks):
                if t.is_terminated:
                    progress.done.add(ms_index[i])
            alive = [i for i, t in enumerate(tasks) if not t.is_terminated]
            if not alive or progress.out_of_time():
                self.last = None
                return -1  # MetaSchedule terminates what is left
            fresh = [i for i in alive if i not in self.visited]
            if fresh:
                choice = fresh[0]
            else:
                grads = []
                for i in alive:
                    h = self.history.get(i, [])
                    if not h:
                        grads.append(-1e9)
                        continue
                    best, n = h[-1], len(h)
                    g1 = (h[-1 - window] - best) / window if n >= 1 + window else 0.0
                    grads.append((alpha * g1 + (1 - alpha) * best / n) * float(tasks[i].task_weight))
                top = max(grads)
                choice = (alive[grads.index(top)] if top != min(grads)
                          else alive[self.rng.randrange(len(alive))])
            self.visited.add(choice)
            self.last = choice
            return choice

    return _Scheduler()
