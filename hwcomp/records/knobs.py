"""Knob records: measurements of hwcomp's own kernels' knobs, and applying the best ones at build.

``hwcomp_knobs.json`` in a database directory holds one JSON object per line: ``workload``
(structural hash), ``task``, ``kernel``, ``knobs``, ``run_secs``, ``error``, ``signature``, ``time``.
The tuner (:mod:`hwcomp.tune.knobs`) appends them as it measures; :func:`stored_knob_rules` gives
``hwcomp.build.schedule`` a rule that applies the best stored knobs to the matching PrimFuncs.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

from ..target import Target
from .formats import mean_secs, parse_knob_line, workload_key
from .locations import KNOBS, target_signature
from .store import append_json_line

KERNEL = "tiled_reduction"


def knob_types():
    from hwcomp.schedules.cpu import TileKnobs

    return TileKnobs


def knobs_to_dict(knobs) -> dict:
    return dataclasses.asdict(knobs)


def knobs_str(knobs) -> str:
    return ",".join(f"{k}={v}" for k, v in knobs_to_dict(knobs).items())


def knobs_from_dict(d: dict):
    TileKnobs = knob_types()
    fields = {f.name for f in dataclasses.fields(TileKnobs)}
    if set(d) - fields:
        raise ValueError(f"unknown knobs {sorted(set(d) - fields)}")
    return TileKnobs(**d)


@dataclasses.dataclass
class KnobEntry:
    workload: str
    kernel: str
    knobs: object
    secs: float | None
    task: str = ""


def read_knob_entries(directory: str | Path, target: Target | None = None) -> list[KnobEntry]:
    """Every measured knob set in ``directory``'s ``hwcomp_knobs.json`` (bad lines skipped silently:
    :func:`~hwcomp.records.validate.validate_database` reports them)."""
    path = Path(directory) / KNOBS
    if not path.is_file():
        return []
    want = target_signature(target) if target is not None else None
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            obj = parse_knob_line(line)
            if want is not None and obj.get("signature") not in (None, want):
                continue
            if obj.get("kernel") != KERNEL:
                continue
            out.append(KnobEntry(obj["workload"], obj["kernel"], knobs_from_dict(obj["knobs"]),
                                 mean_secs(obj.get("run_secs")), obj.get("task", "")))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return out


def best_knobs(directory: str | Path, target: Target | None = None) -> dict[str, KnobEntry]:
    """The fastest measured knob set per workload."""
    best: dict[str, KnobEntry] = {}
    for e in read_knob_entries(directory, target):
        if e.secs is not None and (e.workload not in best or e.secs < best[e.workload].secs):
            best[e.workload] = e
    return best


def append_knob_entry(directory: Path, workload: str, task: str, knobs, secs: list[float] | None,
                      error: str | None, signature: str) -> None:
    """Add one measurement to ``directory``'s ``hwcomp_knobs.json`` (flushed to disk at once, so an
    interrupted search resumes where it stopped)."""
    append_json_line(Path(directory) / KNOBS, {
        "workload": workload, "task": task, "kernel": KERNEL, "knobs": knobs_to_dict(knobs), "run_secs": secs,
        "error": error, "signature": signature, "time": datetime.datetime.now().isoformat(timespec="seconds")})


# ----------------------------------------------------------------------------- applying them


def stored_knob_rules(database: str | Path | None, target: Target) -> list:
    """dlight rules for ``hwcomp.build.schedule``: tuned knobs for the workloads that have them.

    Empty when there is no database or it stores no knobs. Put them before the default rules: a
    function without stored knobs falls through to the default ``TiledReduction``.
    """
    if database is None or target.is_gpu:
        return []
    table = {k: e.knobs for k, e in best_knobs(database, target).items()}
    return [StoredKnobs(target.vector_bits, table)] if table else []


def _stored_knobs_rule_class():
    from tvm.s_tir.dlight.base import ScheduleRule

    class _StoredKnobs(ScheduleRule):
        """TiledReduction with the knobs tuned for this exact workload (structural hash)."""

        def __init__(self, vector_bits: int, table: dict):
            self.vector_bits = vector_bits
            self.table = table

        def is_target_available(self, target) -> bool:
            return target.kind.name == "llvm"

        def apply(self, func, target, tunable):
            import tvm

            if not isinstance(func, tvm.tirx.PrimFunc) or not self.is_target_available(target):
                return None
            knobs = self.table.get(workload_key(func))
            if knobs is None:
                return None
            from hwcomp.schedules.cpu import TiledReduction

            return TiledReduction(self.vector_bits, knobs).apply(func, target, tunable)

    return _StoredKnobs


def StoredKnobs(vector_bits: int, table: dict):  # noqa: N802 - a class in disguise (lazy TVM import)
    return _stored_knobs_rule_class()(vector_bits, table)
