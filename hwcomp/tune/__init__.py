"""Auto-tuning per target: MetaSchedule (XGBoost cost model) and hwcomp's own kernel knobs.

``tune(model, target, trials)`` measures schedules for the model's tasks and stores them in the
target's database directory; ``hwcomp.compile`` applies that database. See :mod:`.tuner`,
:mod:`.database` (validation, export/import/merge, shipped records), :mod:`.knobs`, :mod:`.workers`
(local or RPC measurement) and :mod:`.cli` (``hwcomp tune``, ``hwcomp db``).

Names load lazily: importing :mod:`hwcomp.tune` does not import TVM (tuning worker processes import
:mod:`hwcomp.tune.workers` by reference and must start quickly).
"""

_LAZY = {
    "tune": "tuner", "TuneResult": "tuner", "TaskReport": "tuner",
    "validate_database": "database", "ValidationReport": "database", "TuningDatabaseWarning": "database",
    "open_database": "database", "default_database_dir": "database", "user_database_dir": "database",
    "shipped_database_dir": "database", "export_database": "database", "import_database": "database",
    "merge_databases": "database", "target_signature": "database", "workload_stats": "database",
    "tune_knobs": "knobs", "stored_knob_rules": "knobs", "best_knobs": "knobs",
    "extract_tasks": "tasks", "lower_for_tuning": "tasks", "workload_key": "tasks",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hwcomp.tune' has no attribute {name!r}")


__all__ = list(_LAZY)
