"""Records: what was measured on a target, where it is kept, and how it is read, checked and written.

Below ``build`` (which applies records) and ``tune`` (which produces them); imports neither.

* :mod:`.locations`: the files of a database directory, the cache root, the user's and the shipped
  database directories, target signatures (which records a target may use);
* :mod:`.store`: the one atomic writer, appender and file lock; the directory's target file;
  :class:`MeasurementStore`, the keyed store of measured latencies (BSR choices, policy latencies);
* :mod:`.formats`: one parser per line format (MetaSchedule workloads and records, knob entries)
  and the one 64-bit workload hash (:func:`workload_key`);
* :mod:`.validate`: checking a directory line by line before MetaSchedule opens it;
* :mod:`.knobs`: knob records of hwcomp's own kernels and the build rule that applies them.

Nothing here imports TVM until it is used.
"""

from .formats import FAILED_SECS, WorkloadStats, workload_key, workload_stats
from .knobs import KnobEntry, best_knobs, read_knob_entries, stored_knob_rules
from .locations import (
    BSR_CHOICES,
    DATA_FILES,
    KNOBS,
    MEASUREMENT_FILES,
    META,
    POLICY_LATENCY,
    RECORDS,
    WORKLOADS,
    cache_root,
    compatible_shipped_dir,
    default_database_dir,
    has_records,
    shipped_database_dir,
    target_signature,
    user_database_dir,
)
from .store import (
    MeasurementStore,
    TuningDatabaseWarning,
    atomic_write,
    database_signature,
    locked,
    read_meta,
    write_meta,
)
from .validate import ValidationReport, open_database, validate_database

__all__ = [
    "BSR_CHOICES", "DATA_FILES", "FAILED_SECS", "KNOBS", "MEASUREMENT_FILES", "META", "POLICY_LATENCY", "RECORDS",
    "WORKLOADS", "KnobEntry", "MeasurementStore", "TuningDatabaseWarning", "ValidationReport", "WorkloadStats",
    "atomic_write", "best_knobs", "cache_root", "compatible_shipped_dir", "database_signature",
    "default_database_dir", "has_records", "locked", "open_database", "read_knob_entries", "read_meta",
    "shipped_database_dir", "stored_knob_rules", "target_signature", "user_database_dir", "validate_database",
    "workload_key", "workload_stats", "write_meta",
]
