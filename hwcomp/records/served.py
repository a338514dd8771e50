"""Which side serves each workload: MetaSchedule's best record or hwcomp's own schedule.

MetaSchedule serves a workload's fastest *recorded* record whenever one exists; nothing in its
database can say "the default is faster here". The tuner's confirmation step times both sides
together and writes its verdict to ``hwcomp_served.json`` (JSON lines, a later line of a workload
wins): ``{"key": workload, "serve": "hwcomp" | "metaschedule", ...}``. Compile opens
:func:`served_database`, a copy without the MetaSchedule records of the workloads hwcomp serves, so
its own rules (stored knobs, else the defaults, with the panel prefetch no trace can hold) build them.

Storing the winning default *as* a record instead loses what its trace cannot replay: BERT-base tuned
20 minutes ran 4.6 % slower than untuned that way (the prefetch-free default served as a record).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .formats import workload_hashes
from .locations import KNOBS, META, RECORDS, SERVED, WORKLOADS, cache_root, this_cpu
from .store import (
    MeasurementStore,
    atomic_write,
    lines_text,
    locked,
    path_key,
    read_lines,
)

HWCOMP, METASCHEDULE = "hwcomp", "metaschedule"


def verdict(serve: str, task: str, hwcomp_secs: float | None, record_secs: float | None) -> dict:
    """One ``hwcomp_served.json`` entry: which side serves, both times (seconds), where measured."""
    return {"serve": serve, "task": task, "hwcomp_secs": hwcomp_secs, "record_secs": record_secs, "cpu": this_cpu()}


def verdicts(directory: str | Path) -> MeasurementStore:
    """The served-schedule verdicts of a database directory."""
    return MeasurementStore(Path(directory) / SERVED)


def hwcomp_served(directory: str | Path) -> set[str]:
    """Workload hashes whose latest verdict is that hwcomp's schedule is faster."""
    return {k for k, e in verdicts(directory).load().items() if e.get("serve") == HWCOMP}


def served_database(directory: str | Path) -> Path:
    """The directory compile opens for ``directory``: itself, or a cached copy without the MetaSchedule
    records of the workloads hwcomp serves (knob entries kept: they are part of hwcomp's side)."""
    directory = Path(directory)
    drop = hwcomp_served(directory)
    if not drop:
        return directory
    return without_workloads(directory, drop, cache_root() / "served" / path_key(directory), drop_knobs=False)


def without_workloads(source: Path, drop: set[str], dest: Path, drop_knobs: bool = True) -> Path:
    """A copy of the database ``source`` in ``dest`` whose MetaSchedule records (and, with
    ``drop_knobs``, knob entries) for the workload hashes in ``drop`` are left out (rewritten only
    when the source or ``drop`` changed)."""
    stamp = hashlib.sha1(json.dumps(
        [sorted(drop), drop_knobs] + [[n, (source / n).stat().st_size, (source / n).stat().st_mtime_ns]
                          for n in (WORKLOADS, RECORDS, KNOBS, META) if (source / n).is_file()]).encode()).hexdigest()
    dest.mkdir(parents=True, exist_ok=True)
    with locked(dest):
        if (dest / ".stamp").is_file() and (dest / ".stamp").read_text() == stamp:
            return dest
        workloads = read_lines(source / WORKLOADS)[0]
        hashes = workload_hashes(source)

        def kept_record(text: str) -> bool:
            try:
                return hashes[json.loads(text)[0]] not in drop
            except (ValueError, IndexError, TypeError):
                return False

        def kept_knob(text: str) -> bool:
            try:
                return not drop_knobs or json.loads(text).get("workload") not in drop
            except (ValueError, AttributeError):
                return False

        atomic_write(dest / WORKLOADS, lines_text(workloads))
        atomic_write(dest / RECORDS, lines_text([t for t in read_lines(source / RECORDS)[0] if kept_record(t)]))
        if (source / KNOBS).is_file():
            atomic_write(dest / KNOBS, lines_text([t for t in read_lines(source / KNOBS)[0] if kept_knob(t)]))
        elif (dest / KNOBS).exists():
            (dest / KNOBS).unlink()
        if (source / META).is_file():
            atomic_write(dest / META, (source / META).read_text())
        atomic_write(dest / ".stamp", stamp)
    return dest


__all__ = ["HWCOMP", "METASCHEDULE", "hwcomp_served", "served_database", "verdict", "verdicts", "without_workloads"]
