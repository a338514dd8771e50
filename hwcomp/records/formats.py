"""The line formats of a database directory, one parser each, and the one workload hash.

* ``database_workload.json``: ``[structural hash, base64 IR]`` per line (:func:`parse_workload_line`);
* ``database_tuning_record.json``: ``[workload line index, [trace, run_secs, target, args_info]]``
  per line, appended by MetaSchedule as each batch is measured (:func:`parse_record_line`);
* ``hwcomp_knobs.json``: hwcomp's own kernels' knob measurements, one JSON object per line with
  ``workload``, ``kernel``, ``knobs`` and ``run_secs`` (:func:`parse_knob_line`; see :mod:`.knobs`).

Each parser raises ValueError naming what is wrong; :func:`bad_line_reason` turns that into the
reason a validation report gives.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .locations import RECORDS, WORKLOADS
from .store import read_lines

FAILED_SECS = 1e9  # MetaSchedule stores 1e10 s for candidates that failed to build or run
MASK64 = (1 << 64) - 1


def workload_key(func_or_mod) -> str:
    """The structural hash MetaSchedule keys a workload by (64 bits, decimal string).

    ``func_or_mod``: a PrimFunc as it sits in the Relax module (normalized here the way MetaSchedule
    normalizes it: ``global_symbol = "main"``, ``tirx.noalias``) or an already normalized IRModule.
    """
    import tvm
    import tvm_ffi

    if isinstance(func_or_mod, tvm.tirx.PrimFunc):
        func_or_mod = tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")(func_or_mod)
    return str(tvm_ffi.structural_hash(func_or_mod) & MASK64)


def mean_secs(secs: list[float] | None) -> float | None:
    """The mean of a measurement's ``run_secs``; None when it failed (or was never run)."""
    return sum(secs) / len(secs) if secs and min(secs) < FAILED_SECS else None


def check_run_secs(secs: Any) -> None:
    if secs is not None and not (isinstance(secs, list) and all(isinstance(s, (int, float)) for s in secs)):
        raise ValueError("run_secs is not a list of numbers")


def parse_workload_line(text: str) -> list[str]:
    """``[hash, module]``: a line of ``database_workload.json`` (the module is not decoded here)."""
    obj = json.loads(text)
    if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(v, str) for v in obj)):
        raise ValueError("not a [hash, module] workload entry")
    return obj


def parse_record_line(text: str) -> list:
    """``[workload index, [trace, run_secs, target, args_info]]``: a line of ``database_tuning_record.json``."""
    obj = json.loads(text)
    if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[1], list) and len(obj[1]) == 4):
        raise ValueError("not a [workload index, record] entry")
    idx = obj[0]
    if not isinstance(idx, int) or isinstance(idx, bool):
        raise ValueError(f"workload index {idx!r} is not an integer")
    check_run_secs(obj[1][1])
    return obj


def parse_knob_line(text: str) -> dict:
    """A line of ``hwcomp_knobs.json``: an object with ``workload``, ``kernel``, ``knobs``, ``run_secs``."""
    obj = json.loads(text)
    if not (isinstance(obj, dict) and isinstance(obj.get("workload"), str) and isinstance(obj.get("knobs"), dict)
            and isinstance(obj.get("kernel"), str)):
        raise ValueError("not a knob entry (needs workload, kernel, knobs)")
    check_run_secs(obj.get("run_secs"))
    return obj


def bad_line_reason(e: ValueError) -> str:
    return "truncated or invalid JSON" if isinstance(e, json.JSONDecodeError) else str(e)


def record_key(shash: str, rec_line: str) -> str:
    """What makes two records the same: their workload and their schedule trace."""
    rec = json.loads(rec_line)[1]
    return shash + json.dumps(rec[0], separators=(",", ":"))


def knob_key(text: str) -> str:
    """What makes two knob entries the same: workload, kernel and knobs."""
    obj = json.loads(text)
    return json.dumps([obj.get("workload"), obj.get("kernel"), obj.get("knobs")], sort_keys=True)


# ----------------------------------------------------------------------------- statistics


@dataclasses.dataclass
class WorkloadStats:
    """Records of one workload in a database: how many were measured, how many failed, the best."""

    trials: int = 0
    failed: int = 0
    best_secs: float | None = None

    def add(self, secs: list[float] | None) -> None:
        self.trials += 1
        if not secs or min(secs) >= FAILED_SECS:
            self.failed += 1
            return
        mean = sum(secs) / len(secs)
        if self.best_secs is None or mean < self.best_secs:
            self.best_secs = mean


def workload_hashes(directory: str | Path) -> list[str | None]:
    """The workload hash of each line of ``database_workload.json`` (None for a bad line): what a
    record's workload index points at."""
    hashes: list[str | None] = []
    for text in read_lines(Path(directory) / WORKLOADS)[0]:
        try:
            hashes.append(json.loads(text)[0])
        except (ValueError, IndexError, TypeError):
            hashes.append(None)
    return hashes


def workload_stats(directory: str | Path) -> dict[str, WorkloadStats]:
    """Per workload hash: the MetaSchedule records of a (validated) database directory."""
    directory = Path(directory)
    hashes = workload_hashes(directory)
    stats: dict[str, WorkloadStats] = {}
    for text in read_lines(directory / RECORDS)[0]:
        try:
            idx, rec = json.loads(text)
            shash = hashes[idx]
        except (ValueError, IndexError, TypeError):
            continue
        if shash is not None:
            stats.setdefault(shash, WorkloadStats()).add(rec[1])
    return stats
