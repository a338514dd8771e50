"""The in-model check: a MetaSchedule record that wins alone must not lose inside the model.

The confirmation step (:mod:`hwcomp.tune.confirm`) times each task alone, repeatedly, its weights
flushed but its input left where the previous run of the same kernel put it. Inside the model the
input was just written by the previous layer's kernel, with that kernel's split over the cores, and
hwcomp's own schedules split consecutive layers alike. Measured on ResNet-50 (Zen 4, 2 cores, a
20-minute tune): MetaSchedule's max-pool ran 68 us alone against the default's 157, and 225 us
against 92 inside the model; two of its 1x1 convs, 0.4-3 % faster alone, ran 44-46 % slower inside,
and the tuned model came out 2 % slower than the untuned one.

So after the confirmation, where the model runs here, both builds are compiled (no records; the
served database) and their kernels timed inside the model (:func:`hwcomp.runtime.kernel_profile.
profile_kernels`, alternating, the lower of two profiles per kernel); a workload MetaSchedule serves
whose kernel is slower inside the model than the untuned build's by more than ``margin`` gets the
verdict "hwcomp" in ``hwcomp_served.json``, so compile serves hwcomp's schedule for it.

Then the model as a whole: records each within the margin can still add up, and a record's kernel
can slow the kernels after it (MobileViT-S, 20-minute tune, Zen 4: the records' build 3 % slower in
place over 16 kernels, one past the margin). Where the tuned build, with the hand-backs, is not
faster than the untuned one as measured it is rebuilt and timed again, and if it is still not
faster every remaining record is handed back too: a tune never leaves the model slower in place
than it found it (as measured, with hwcomp's knob tuning kept).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path


@dataclasses.dataclass
class InModelCheck:
    """What the check measured: kernel times (ms per model run) of the untuned and tuned builds (the
    tuned one before any hand-back) and the tasks it handed back to hwcomp."""

    untuned_ms: dict[str, float]
    tuned_ms: dict[str, float]
    flipped: list[str]
    whole_model: bool = False  # every record handed back: the tuned model as a whole was not faster

    @property
    def untuned_total_ms(self) -> float:
        return sum(self.untuned_ms.values())

    @property
    def tuned_total_ms(self) -> float:
        return sum(self.tuned_ms.values())

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "untuned_total_ms": self.untuned_total_ms,
                "tuned_total_ms": self.tuned_total_ms}


def slower_in_model(untuned_ms: dict[str, float], tuned_ms: dict[str, float], served_by_records: set[str],
                    margin: float = 0.03) -> list[str]:
    """The kernels (task names) served by records whose in-model time exceeds the untuned build's
    by more than ``margin`` (a fraction), slowest loss first."""
    out = [(tuned_ms[n] - untuned_ms[n], n) for n in served_by_records
           if n in tuned_ms and n in untuned_ms and tuned_ms[n] > untuned_ms[n] * (1 + margin)]
    return [n for _, n in sorted(out, reverse=True)]


def _min_profile(arts: dict, rounds: int, runs: int) -> dict[str, dict[str, float]]:
    from ..runtime.kernel_profile import profile_kernels

    best: dict[str, dict[str, float]] = {label: {} for label in arts}
    for _ in range(rounds):  # alternating: a slow spell of the machine hits both builds
        for label, art in arts.items():
            for k in profile_kernels(art, runs=runs).kernels:
                best[label][k.name] = min(best[label].get(k.name, float("inf")), k.ms)
    return best


def check_in_model(model, target, db: Path, *, passes=(), example_inputs=None, input_shapes=None,
                   margin: float = 0.03, model_margin: float = 0.0, rounds: int = 2, runs: int = 10,
                   log: Callable[[str], None] | None = print) -> InModelCheck:
    """Compile ``model`` for ``target`` untuned and with the database ``db``, time every kernel inside
    the model, and hand the workloads whose records lose there back to hwcomp's schedule (a verdict
    in ``db``); then, unless the tuned model's kernels take less than ``1 - model_margin`` of the
    untuned ones' (a rebuild confirms), hand back every record (module docstring). ``model``,
    ``passes``, ``example_inputs``, ``input_shapes``: as given to :func:`tune`."""
    from ..api import CompileOptions, compile
    from ..records.served import HWCOMP, METASCHEDULE, verdict, verdicts

    log = log or (lambda s: None)
    served = verdicts(db).load()
    by_records = {e.get("task"): key for key, e in served.items() if e.get("serve") == METASCHEDULE and e.get("task")}
    kw = {"example_inputs": example_inputs, "input_shapes": input_shapes}

    def build(database):
        opts = CompileOptions(passes=list(passes), database=database, use_default_database=False,
                              retime_records=False, verify=False)
        return compile(model, target, None, options=opts, log=None, **{k: v for k, v in kw.items() if v is not None})

    arts = {"untuned": build(None), "tuned": build(db)}
    ms = _min_profile(arts, rounds, runs)

    def hand_back(names: list[str], measured: str) -> None:
        verdicts(db).add({by_records[n]: dict(verdict(HWCOMP, n, ms["untuned"][n] / 1e3, ms["tuned"][n] / 1e3),
                                              measured=measured) for n in names}, replace=True)

    flipped = slower_in_model(ms["untuned"], ms["tuned"], set(by_records), margin)
    for name in flipped:
        log(f"{name}: {ms['tuned'][name]:.3f} ms inside the model with its record, {ms['untuned'][name]:.3f} "
            "ms untuned (faster alone, slower in place) → serving hwcomp's schedule")
    if flipped:
        hand_back(flipped, "in model")
    check = InModelCheck(ms["untuned"], ms["tuned"], flipped)
    log(f"in-model check: kernels {check.untuned_total_ms:.2f} ms untuned, {check.tuned_total_ms:.2f} ms with the "
        "records" + (f"; {len(flipped)} workload(s) handed back to hwcomp's schedule" if flipped else "; every record kept"))
    kept = [n for n in by_records if n not in flipped and n in ms["tuned"] and n in ms["untuned"]]
    estimate = check.tuned_total_ms - sum(ms["tuned"][n] - ms["untuned"][n] for n in flipped)
    if kept and estimate >= check.untuned_total_ms * (1 - model_margin):
        again = _min_profile({"untuned": arts["untuned"], "tuned": build(db)}, rounds, runs)  # with the hand-backs
        untuned_total, tuned_total = sum(again["untuned"].values()), sum(again["tuned"].values())
        if tuned_total >= untuned_total * (1 - model_margin):
            log(f"in-model check: with the {len(kept)} record(s) left the model's kernels take {tuned_total:.2f} ms "
                f"against {untuned_total:.2f} untuned → every record handed back to hwcomp's schedule")
            hand_back(kept, "in model, whole model")
            check.flipped = flipped + kept
            check.whole_model = True
    return check


__all__ = ["InModelCheck", "check_in_model", "slower_in_model"]
