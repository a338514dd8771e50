"""Tuning databases: MetaSchedule JSON databases, one directory per target.

A database directory holds ``database_workload.json`` and ``database_tuning_record.json`` (one JSON
record per line, appended as measured). Compile applies the user's database for the target when
present, else the records shipped in ``schedules/<target>/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..target import Target

WORKLOADS, RECORDS = "database_workload.json", "database_tuning_record.json"


def user_database_dir(target: Target) -> Path:
    root = Path(os.environ.get("HWCOMP_CACHE", Path.home() / ".cache" / "hwcomp"))
    return root / "tuning" / target.name


def shipped_database_dir(target: Target) -> Path | None:
    from importlib import resources

    d = resources.files("hwcomp.schedules") / target.name.replace("-", "_") / "records"
    return Path(str(d)) if d.is_dir() else None


def default_database_dir(target: Target) -> Path | None:
    """The database compile uses when none is named: the user's, else the shipped one."""
    user = user_database_dir(target)
    if (user / RECORDS).is_file():
        return user
    return shipped_database_dir(target)


def open_database(directory: str | Path):
    """Open (creating if needed) a MetaSchedule JSON database in ``directory``."""
    from tvm.s_tir import meta_schedule as ms

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(path_workload=str(directory / WORKLOADS),
                                    path_tuning_record=str(directory / RECORDS))
