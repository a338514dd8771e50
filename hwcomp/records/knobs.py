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

from ..target import CpuCaps, Target
from .formats import mean_secs, parse_knob_line, workload_key
from .locations import KNOBS, target_signature
from .store import append_json_line

KERNEL = "tiled_reduction"  # TiledReduction's knobs (TileKnobs)
CONV_KERNEL = "blocked_conv"  # BlockedConv's knobs (ConvKnobs)


def kernel_types() -> dict[str, type]:
    """Kernel name → its knob dataclass: the kernels whose knobs are tuned and stored."""
    from hwcomp.schedules.cpu import ConvKnobs, TileKnobs

    return {KERNEL: TileKnobs, CONV_KERNEL: ConvKnobs}


def knob_types():
    """TiledReduction's knob dataclass (``kernel_types()[KERNEL]``)."""
    return kernel_types()[KERNEL]


def kernel_of(knobs) -> str:
    for name, cls in kernel_types().items():
        if isinstance(knobs, cls):
            return name
    raise TypeError(f"not a knob set of a tunable kernel: {knobs!r}")


def rule_for(knobs, caps: CpuCaps):
    """The dlight rule that schedules with ``knobs`` on a CPU with ``caps`` (BlockedConv for
    ConvKnobs, else TiledReduction)."""
    from hwcomp.schedules.cpu import BlockedConv, ConvKnobs, TiledReduction

    if isinstance(knobs, ConvKnobs):
        return BlockedConv(caps.vector_bits, knobs, caps.registers)
    return TiledReduction(caps.vector_bits, knobs, l2_bytes=caps.l2_bytes)


def knobs_to_dict(knobs) -> dict:
    return dataclasses.asdict(knobs)


def knobs_str(knobs) -> str:
    return ",".join(f"{k}={v}" for k, v in knobs_to_dict(knobs).items())


def knobs_from_dict(d: dict, kernel: str = KERNEL):
    cls = kernel_types().get(kernel)
    if cls is None:
        raise ValueError(f"unknown kernel {kernel!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    if set(d) - fields:
        raise ValueError(f"unknown knobs {sorted(set(d) - fields)}")
    return cls(**d)


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
            if obj.get("kernel") not in kernel_types():
                continue
            out.append(KnobEntry(obj["workload"], obj["kernel"], knobs_from_dict(obj["knobs"], obj["kernel"]),
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
        "workload": workload, "task": task, "kernel": kernel_of(knobs), "knobs": knobs_to_dict(knobs), "run_secs": secs,
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
    return [StoredKnobs(target.cpu_caps, table)] if table else []


def _stored_knobs_rule_class():
    from tvm.s_tir.dlight.base import ScheduleRule

    class _StoredKnobs(ScheduleRule):
        """hwcomp's kernel with the knobs tuned for this exact workload (structural hash)."""

        def __init__(self, caps: CpuCaps, table: dict):
            self.caps = caps
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
            return rule_for(knobs, self.caps).apply(func, target, tunable)

    return _StoredKnobs


def StoredKnobs(caps: CpuCaps, table: dict):
    """The stored-knobs rule (a ScheduleRule subclass made on first use: TVM imports lazily)."""
    return _stored_knobs_rule_class()(caps, table)
