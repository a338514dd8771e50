"""Auto-tuning per target: MetaSchedule (XGBoost cost model) and hwcomp's own kernel knobs.

``tune(model, target, TuneOptions(trials=N))`` measures schedules for the model's tasks and stores them in the
target's database directory; ``hwcomp.compile`` applies that database. See :mod:`.tuner`,
:mod:`.database` (export/import/merge, seeding from shipped records), :mod:`.knobs`, :mod:`.workers`
(local or RPC measurement); the ``hwcomp tune`` / ``hwcomp db`` verbs are in :mod:`hwcomp.cli.tune`.

Reading, validating and locating the records is :mod:`hwcomp.records` (below build, which applies
them). Names load lazily: importing :mod:`hwcomp.tune` does not import TVM (tuning worker processes import
:mod:`hwcomp.tune.workers` by reference and must start quickly).
"""

_LAZY = {
    "tune": "tuner", "TuneOptions": "tuner", "TuneResult": "tuner", "TaskReport": "tuner", "parse_duration": "tuner",
    "export_database": "database", "import_database": "database", "merge_databases": "database",
    "tune_knobs": "knobs", "extract_tasks": "tasks", "lower_for_tuning": "tasks",
    # now in hwcomp.records (".records.x" is hwcomp.records.x, relative to this package)
    "validate_database": ".records.validate", "ValidationReport": ".records.validate",
    "open_database": ".records.validate", "TuningDatabaseWarning": ".records.store",
    "default_database_dir": ".records.locations", "user_database_dir": ".records.locations",
    "shipped_database_dir": ".records.locations", "target_signature": ".records.locations",
    "workload_stats": ".records.formats", "workload_key": ".records.formats",
    "stored_knob_rules": ".records.knobs", "best_knobs": ".records.knobs",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hwcomp.tune' has no attribute {name!r}")


__all__ = list(_LAZY)
