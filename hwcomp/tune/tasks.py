"""The tuning tasks of a model: its fused PrimFuncs, exactly as ``hwcomp.compile`` will schedule them.

Tasks must be extracted from the module compile builds, not from the imported one: compression
passes rewrite the graph (e.g. dense → block-sparse), weights are folded and lifted, and only the
legalized and fused module (the ``zero`` pipeline, under the target) has the PrimFuncs that the
database is queried with. A record is found again only when the workload is structurally equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from ..records.formats import workload_key
from ..target import Target


@dataclasses.dataclass
class Task:
    """One distinct fused PrimFunc of the model. ``weight``: how many times the model calls it."""

    name: str
    mod: object  # tvm.IRModule with one PrimFunc "main", normalized as MetaSchedule stores it
    weight: float
    flop: float
    key: str  # structural hash, as MetaSchedule's database writes it
    extracted: object | None = None  # ms.ExtractedTask

    @property
    def func(self):
        return self.mod["main"]


def lower_for_tuning(model, target: Target, passes: Sequence[Callable] = (), example_inputs=None,
                     input_shapes: dict | None = None):
    """The module compile schedules: import → bind weights → passes → target layouts → finalize →
    legalize + fuse.

    ``model`` is anything ``hwcomp.compile`` accepts (an ``nn.Module`` with ``example_inputs``, a
    ``.pt2``/``.onnx`` path, an ``ImportedModel``) or a Relax ``IRModule`` whose weights are already
    parameters (used as is, passes applied).
    """
    import tvm
    from tvm import relax

    from ..build import bind_weights, finalize_weights, layout_for_target, lower
    from ..frontend import ImportedModel, load_model

    if isinstance(model, tvm.IRModule):
        mod = model
        for p in passes:
            mod = p(mod)
    else:
        imported = model if isinstance(model, ImportedModel) else load_model(model, example_inputs, input_shapes)
        mod = bind_weights(imported.mod, imported.params)
        for p in passes:
            mod = p(mod)
        mod = layout_for_target(mod, target)
        mod, _weights = finalize_weights(mod)
    if not any(isinstance(f, relax.Function) for f in mod.functions.values()):
        return mod  # TIR only: already lowered
    with target.tvm_target():
        return lower(mod, target)


def extract_tasks(lowered, target: Target) -> list[Task]:
    """The distinct PrimFuncs of a lowered module, heaviest first (as MetaSchedule extracts them)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    tvm_target = target.tvm_target()
    tasks: list[Task] = []
    if any(isinstance(f, tvm.relax.Function) for f in lowered.functions.values()):
        for et in ms.relax_integration.extract_tasks(lowered, tvm_target):
            mod = et.dispatched[0]
            if mod["main"].attrs and mod["main"].attrs.get("tirx.is_scheduled", False):
                continue
            if _untuned(mod["main"]):
                continue
            tasks.append(Task(et.task_name, mod, float(et.weight), _flop(estimate_tir_flops, mod),
                              workload_key(mod), et))
    else:
        normalize = tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")
        seen: dict[str, Task] = {}
        for gv, func in lowered.functions.items():
            if not isinstance(func, tvm.tirx.PrimFunc):
                continue
            mod = normalize(func)
            key = workload_key(mod)
            if key in seen:
                seen[key].weight += 1
                continue
            seen[key] = Task(gv.name_hint, mod, 1.0, _flop(estimate_tir_flops, mod), key, None)
        tasks = list(seen.values())
    return tasks


def _untuned(func) -> bool:
    """Whether ``func`` is built around the marked block of a kernel only hwcomp's rule schedules
    (``UNTUNED_BLOCKS``), found as that rule finds it (``rules.annotated_block``)."""
    from tvm import s_tir

    from hwcomp.schedules.cpu import UNTUNED_BLOCKS
    from hwcomp.schedules.cpu.rules import annotated_block

    sch = s_tir.Schedule(func)
    return any(annotated_block(sch, a)[1] is not None for a in UNTUNED_BLOCKS)


def _flop(estimate, mod) -> float:
    try:
        return max(1.0, float(estimate(mod)))
    except Exception:  # noqa: BLE001 - data-dependent loops cannot be counted
        return 1.0


def task_loggers(log_dir: str | Path, names: list[str]) -> list:
    """One file logger per task under ``log_dir`` (``task_<i>_<name>.log``, replaced each run).

    Not TVM's ``get_loggers_from_work_dir``: it re-runs ``logging.config.dictConfig`` over the global
    MetaSchedule logger and fails on the second call in a process once that logger holds an unnamed
    handler (``'NoneType' object has no attribute 'format'``)."""
    import logging

    Path(log_dir).mkdir(parents=True, exist_ok=True)
    out = []
    for i, name in enumerate(names):
        logger = logging.getLogger(f"hwcomp.tune.task_{i}_{name[:100]}")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        for h in list(logger.handlers):  # a previous run's file in another folder
            logger.removeHandler(h)
            h.close()
        handler = logging.FileHandler(Path(log_dir) / f"task_{i}_{name[:100]}.log", mode="w", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
        out.append(logger)
    return out


def tune_contexts(tasks: list[Task], target: Target, log_dir: str, population: int | None = None,
                  seed: int | None = None, search: str = "evolutionary"):
    """MetaSchedule ``TuneContext`` objects for the tasks (default CPU/GPU rules).

    ``search``: ``"evolutionary"`` (MetaSchedule's default, guided by the cost model) or ``"random"``
    (``ReplayTrace``: every candidate is an independent random sample of the design space)."""
    import logging

    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import fork_seed

    # MetaSchedule logs every batch's statistics table to the console at INFO; hwcomp shows a progress
    # bar instead. The full logs still go to files under ``log_dir``.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    if search == "random":
        strategy = ms.search_strategy.ReplayTrace()
    elif population is None:
        strategy = "evolutionary"
    else:
        strategy = ms.search_strategy.EvolutionarySearch(population_size=population,
                                                         init_min_unmeasured=min(50, population))
    loggers = task_loggers(log_dir, [t.name for t in tasks])
    rand = fork_seed(seed, n=len(tasks))
    tvm_target = target.tvm_target()
    return [
        ms.TuneContext(mod=t.mod, target=tvm_target, space_generator="post-order-apply", search_strategy=strategy,
                       task_name=t.name, logger=logger, rand_state=r, num_threads="physical").clone()
        for t, logger, r in zip(tasks, loggers, rand)
    ]
