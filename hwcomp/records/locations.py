"""Where records live and which target they are for.

A database directory (one per target) holds MetaSchedule's two JSON-lines files, hwcomp's knob
measurements, other measured latencies and a small file naming its target (names below). Compile
uses the user's directory for the target when it has records (``$HWCOMP_CACHE/tuning/<target>``),
else the records shipped in ``schedules/<target>/records/``, else shipped records of another target
with the same :func:`target_signature` (``host`` on an AVX2 machine uses ``x86-avx2``'s).
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..target import Target

# ---- the files of a database directory
WORKLOADS, RECORDS = "database_workload.json", "database_tuning_record.json"
KNOBS, META = "hwcomp_knobs.json", "hwcomp_db.json"
DATA_FILES = (WORKLOADS, RECORDS, KNOBS)
# Latencies measured on the target that are not MetaSchedule records, kept beside them: the BSR
# pass's dense-vs-sparse choices (one JSON object) and the policy search's per-layer option
# latencies (JSON lines). Export, import and merge carry them; the destination's entry wins.
BSR_CHOICES, POLICY_LATENCY = "hwcomp_bsr.json", "policy_latency.json"
# Per workload, which side the tuner's confirmation step found faster: MetaSchedule's best record or
# hwcomp's own schedule (stored knobs, else the default rules). JSON lines; see ``records.served``.
SERVED = "hwcomp_served.json"
MEASUREMENT_FILES = (BSR_CHOICES, POLICY_LATENCY, SERVED)


# ----------------------------------------------------------------------------- directories


def cache_root() -> Path:
    """hwcomp's cache directory: ``$HWCOMP_CACHE``, else ``~/.cache/hwcomp``."""
    return Path(os.environ.get("HWCOMP_CACHE", Path.home() / ".cache" / "hwcomp"))


def user_database_dir(target: Target) -> Path:
    return cache_root() / "tuning" / target.name


def shipped_database_dir(target: Target) -> Path | None:
    from importlib import resources

    d = resources.files("hwcomp.schedules") / target.name.replace("-", "_") / "records"
    return Path(str(d)) if d.is_dir() else None


def has_records(directory: str | Path | None) -> bool:
    return directory is not None and (Path(directory) / RECORDS).is_file() and (Path(directory) / RECORDS).stat().st_size > 0


def compatible_shipped_dir(target: Target) -> Path | None:
    """Shipped records of ``target`` itself, else of a shipped target with the same signature."""
    own = shipped_database_dir(target)
    if has_records(own):
        return own
    from ..target import get_target, target_names

    want = target_signature(target)
    for name in target_names():
        if name in ("host", target.name):
            continue
        try:
            other = get_target(name)
        except Exception:  # noqa: BLE001 - a broken description is not this function's business
            continue
        d = shipped_database_dir(other)
        if has_records(d) and target_signature(other) == want:
            return d
    return None


def default_database_dir(target: Target) -> Path | None:
    """The database compile uses when none is named: the user's, else the shipped one.

    "Shipped" includes records tuned for another shipped target with the same
    :func:`target_signature` (e.g. ``host`` on an AVX2+FMA x86 machine → ``x86-avx2``): MetaSchedule
    looks records up by workload only, and hwcomp only offers it records of a compatible target.
    """
    user = user_database_dir(target)
    if has_records(user):
        return user
    return compatible_shipped_dir(target)


# ----------------------------------------------------------------------------- the CPU at hand


@functools.lru_cache(maxsize=1)
def this_cpu() -> str:
    """The CPU a measurement here is made on: model name and the logical CPUs this process may use
    (``"AMD Ryzen 9 5950X × 2"``). Records are only as good as the CPU they were timed on: the same ISA
    on another model (Zen 1 vs Zen 3) or core count can favour other schedules."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and val.strip():
                name = val.strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return f"{name} × {n}"


# ----------------------------------------------------------------------------- target signatures


def plain(obj: Any) -> Any:
    """TVM FFI containers → plain Python (dict, list, str, int, float)."""
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "items"):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, Iterable):
        return [plain(v) for v in obj]
    return str(obj)


def tvm_dict(target: Any) -> dict:
    """The TVM target dict of a hwcomp :class:`Target`, a target dict or a TVM target (not a name:
    resolve it with :func:`~hwcomp.target.get_target` first)."""
    if isinstance(target, Target):
        return dict(target.tvm)
    if isinstance(target, dict):
        return target
    if isinstance(target, str):
        raise TypeError(f"expected a Target, a target dict or a TVM target, got the name {target!r}")
    return plain(target.export())  # tvm.target.Target


_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


@functools.lru_cache(maxsize=256)
def _signature_of(kind: str, triple: str, mcpu: str, mattr: tuple[str, ...], arch_opt: str) -> str:
    if kind == "cuda":
        return f"cuda/{arch_opt or '?'}"
    if kind != "llvm":
        return kind
    arch = _ARCH_ALIASES.get(triple.split("-", 1)[0], triple.split("-", 1)[0]) if triple else platform.machine()
    isa = ""
    if arch == "x86_64":
        import tvm
        from tvm.target import codegen

        d = {"kind": "llvm", "mtriple": triple or "x86_64-linux-gnu"}
        if mcpu:
            d["mcpu"] = mcpu
        if mattr:
            d["mattr"] = list(mattr)
        t = tvm.target.Target(d)
        isa = ("avx512" if codegen.llvm_cpu_has_features(["avx512f"], t)
               else "avx2" if codegen.llvm_cpu_has_features(["avx2", "fma"], t) else "sse")
    elif arch == "aarch64":
        isa = "sve" if any(a.lstrip("+") == "sve" for a in mattr) else "neon"
    return f"llvm/{arch}/{isa}"


def target_signature(target: Any) -> str:
    """What must match for a record measured on one target to be offered to another.

    ``kind/arch/vector ISA`` for CPUs (``llvm/x86_64/avx2``), ``cuda/sm_XX`` for GPUs: the schedule
    space (vector width, instruction set) is the same, only the exact CPU model and core count differ.
    A hwcomp :class:`Target`, a TVM target or a target dict (as stored in records).
    """
    d = tvm_dict(target)
    mattr = d.get("mattr") or ()
    if isinstance(mattr, str):
        mattr = tuple(mattr.split(","))
    return _signature_of(str(d.get("kind", "")), str(d.get("mtriple", "") or ""), str(d.get("mcpu", "") or ""),
                         tuple(str(a) for a in mattr), str(d.get("arch", "") or ""))
