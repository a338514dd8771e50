"""Records measured on another CPU are served here only where they beat hwcomp's default here.

A record is the fastest schedule *on the CPU that tuned it*. On another model of the same ISA it can
lose to the default schedule: the shipped AVX2 records were tuned on a Zen 1, and on a Zen 3 BERT-base
ran 1.59x ONNX Runtime with them where the defaults alone gave 0.97x. A database notes the CPUs it
was measured on (``hwcomp_db.json``'s ``cpus``, see :func:`~hwcomp.records.store.note_cpus`).

When compile is given records from anywhere but this CPU and the target runs here,
:func:`records_for_this_cpu` builds each of the model's tasks that a record covers twice (the
schedule the database serves, and the default schedule) and times both in interleaved rounds. The
verdicts are kept per CPU in the cache (``retimed/<database>.jsonl``, keyed by CPU, workload and the
served record), so only the first compile pays; later ones, and other models sharing a workload,
reuse them. Compile then opens a copy of the database without the records that lost (the source
directory is never changed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from collections.abc import Callable
from pathlib import Path

from ..records.formats import mean_secs, workload_hashes
from ..records.knobs import best_knobs
from ..records.locations import RECORDS, cache_root, this_cpu
from ..records.served import served_database, without_workloads
from ..records.store import (
    UNKNOWN_CPU,
    MeasurementStore,
    path_key,
    read_lines,
    tuned_on,
)
from ..records.validate import open_database, validate_database
from ..target import Target
from .knobs import hwcomp_schedule
from .tasks import Task, extract_tasks

ROUNDS = 3
#: Seconds per scheduled single-function module (None: failed to build or run), all timed together.
Measure = Callable[[list], list]


@dataclasses.dataclass
class Verdict:
    """One task's record against the default on this CPU (seconds, median of the rounds)."""

    task: str
    workload: str
    record_secs: float | None
    default_secs: float | None

    @property
    def keep(self) -> bool:
        """Serve the record: it ran, and faster than the default (or the default did not run)."""
        if self.record_secs is None:
            return False
        return self.default_secs is None or self.record_secs < self.default_secs

    @classmethod
    def from_entry(cls, entry: dict) -> Verdict:
        """A verdict as the cache stores it (``dataclasses.asdict`` plus the store's ``key``)."""
        return cls(**{f.name: entry.get(f.name) for f in dataclasses.fields(cls)})

    def line(self) -> str:
        def fmt(s):
            return "failed" if s is None else f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"

        return (f"{self.task}: record {fmt(self.record_secs)}, default {fmt(self.default_secs)} → "
                + ("record" if self.keep else "default"))


def local_measure(target: Target, rounds: int = ROUNDS) -> Measure:
    """Build with MetaSchedule's builder and time on this machine, ``rounds`` interleaved rounds."""

    def measure(mods: list) -> list[float | None]:
        from .knobs import measure_rounds
        from .workers import (
            Fleet,
            lean_workers,
            make_builder,
            make_runner,
            target_intrinsics,
        )

        with lean_workers(), target_intrinsics(target):
            out = measure_rounds(mods, target, make_builder(), make_runner(Fleet()), rounds)
        return [statistics.median(sum(r) / len(r) for r in secs) if secs else None for secs, _ in out]

    return measure


def served_fingerprints(directory: Path, target: Target) -> dict[str, str]:
    """Workload hash → a digest of what ``directory`` serves for it (the best MetaSchedule record's
    trace, else the best knob set): a verdict holds until that changes."""
    hashes = workload_hashes(directory)
    best: dict[str, tuple[float, str]] = {}
    for text in read_lines(directory / RECORDS)[0]:
        try:
            idx, rec = json.loads(text)
            mean, shash = mean_secs(rec[1]), hashes[idx]
        except (ValueError, IndexError, TypeError):
            continue
        if mean is not None and shash is not None and (shash not in best or mean < best[shash][0]):
            best[shash] = (mean, json.dumps(rec[0], separators=(",", ":")))
    out = {k: "ms:" + v for k, (_, v) in best.items()}
    for k, e in best_knobs(directory, target).items():
        out.setdefault(k, "knobs:" + json.dumps(dataclasses.asdict(e.knobs), sort_keys=True))
    return {k: hashlib.sha1(v.encode()).hexdigest()[:16] for k, v in out.items()}


def _served(task: Task, target: Target, directory: Path):
    """The module compile would build for ``task`` from ``directory`` (record, else stored knobs)."""
    sch = open_database(directory, target, validate=False).query_schedule(task.mod, target.tvm_target(), "main")
    return sch.mod if sch is not None else hwcomp_schedule(task, target, directory)


def _store(database: Path) -> MeasurementStore:
    return MeasurementStore(cache_root() / "retimed" / f"{path_key(database)}.jsonl")


def records_for_this_cpu(lowered, target: Target, database: str | Path, *, measure: Measure | None = None,
                         log: Callable[[str], None] | None = None) -> Path:
    """The directory compile should open for ``database`` on this machine.

    ``lowered``: the model as compile schedules it (:func:`hwcomp.build.lower` of the finalized
    module). ``database`` itself when only this CPU measured it; otherwise its validated records with
    those that lose to the default here left out (see the module docstring). ``measure``: how
    modules are timed (default :func:`local_measure`; injected by tests).
    """
    database = Path(database)
    here = this_cpu()
    cpus = tuned_on(database)
    if cpus == [here]:
        return database
    usable = served_database(validate_database(database, target).usable_dir)
    prints = served_fingerprints(usable, target)
    if not prints:
        return usable
    tasks = [t for t in extract_tasks(lowered, target) if t.key in prints]
    store = _store(database)

    def key(workload: str) -> str:
        return f"{here}|{workload}|{prints[workload]}"

    known = store.load()
    todo = [t for t in tasks if key(t.key) not in known]
    log = log or (lambda s: None)
    if todo:
        where = "an unknown CPU" if cpus == [UNKNOWN_CPU] else ", ".join(cpus)
        log(f"re-timing {len(todo)} tuned schedule(s) against hwcomp's defaults on this CPU ({here}; the records "
            f"were measured on {where}); done once per CPU")
        mods = []
        for t in todo:
            mods += [_served(t, target, usable), hwcomp_schedule(t, target)]
        secs = (measure or local_measure(target))(mods)
        verdicts = [Verdict(t.name, t.key, secs[2 * i], secs[2 * i + 1]) for i, t in enumerate(todo)]
        store.add({key(v.workload): dataclasses.asdict(v) for v in verdicts}, replace=True)
        for v in verdicts:
            log("  " + v.line())
        known = store.load()
    losers = sorted(w for w in prints if key(w) in known and not Verdict.from_entry(known[key(w)]).keep)
    if not losers:
        return usable
    return without_workloads(usable, set(losers), cache_root() / "retimed" / f"{path_key(database)}-"
                             f"{hashlib.sha1(here.encode()).hexdigest()[:8]}")


__all__ = ["Measure", "Verdict", "local_measure", "records_for_this_cpu", "served_fingerprints"]
