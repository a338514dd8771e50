"""One backend per target family: what the passes and the quantizer need from ``schedules/<arch>/``.

A :class:`Backend` bundles a family's int8 kernel provider, its BSR kernel generator and BSR knob
space; each ``schedules/<arch>/__init__.py`` registers its backend under a key made of target data
(GPU kind, or CPU architecture), and :func:`backend_for` looks the target's up — no if-ladders over
targets elsewhere. A CPU architecture without a backend of its own gets :data:`GENERIC_CPU` (the
generic int8 provider, default schedules, and the generic CPU BSR generator).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


def _generic_int8_provider(target):
    from hwcomp.schedules.int8_base import KernelProvider

    return KernelProvider(target)


def cpu_bsr_kernel(target, spec, knobs=None):
    """The generic CPU BSR generator (``schedules/cpu/bsr.py``) for a target and a
    :class:`~hwcomp.schedules.bsr_spec.BsrSpec`."""
    from hwcomp.schedules.cpu.bsr import bsr_kernel

    return bsr_kernel(target, spec, knobs)


def cpu_bsr_knob_space(target, block, m) -> list:
    from hwcomp.schedules.cpu.bsr import target_knob_candidates

    return target_knob_candidates(target, block, m)


def cpu_bsr_knobs_from(d: dict | None):
    from hwcomp.schedules.cpu.bsr import knobs_from_dict

    return knobs_from_dict(d)


@dataclasses.dataclass(frozen=True)
class Backend:
    """A target family's kernels.

    ``int8_provider(target)``: the int8 :class:`~hwcomp.schedules.int8_base.KernelProvider`.
    ``bsr_kernel(target, spec, knobs=None)``: the scheduled fp32 BSR PrimFunc of a
    :class:`~hwcomp.schedules.bsr_spec.BsrSpec`.
    ``bsr_knob_space(target, block, m)``: BSR knob sets to time, likeliest first (empty: none to tune).
    ``bsr_knobs_from(dict | None)``: stored knobs (``to_dict()``) back as the generator's knobs.
    """

    name: str
    int8_provider: Callable = _generic_int8_provider
    bsr_kernel: Callable = cpu_bsr_kernel
    bsr_knob_space: Callable = cpu_bsr_knob_space
    bsr_knobs_from: Callable = cpu_bsr_knobs_from


#: The backend of a CPU architecture with none of its own.
GENERIC_CPU = Backend("generic-cpu")

_REGISTRY: dict[tuple[str, str], Backend] = {}


def backend_key(target) -> tuple[str, str]:
    """The registry key of a target: ``("gpu", tvm kind)`` or ``("cpu", arch)``."""
    return ("gpu", target.tvm["kind"]) if target.is_gpu else ("cpu", target.arch)


def register(key: tuple[str, str], backend: Backend) -> Backend:
    """Register ``backend`` for targets whose :func:`backend_key` is ``key`` (idempotent)."""
    _REGISTRY[key] = backend
    return backend


def backend_for(target) -> Backend:
    """The backend of a :class:`~hwcomp.target.Target` (:data:`GENERIC_CPU` for an unknown CPU arch)."""
    backend = _REGISTRY.get(backend_key(target))
    if backend is None and target.is_gpu:
        raise LookupError(f"no kernel backend for GPU target {target.name!r} ({backend_key(target)})")
    return backend or GENERIC_CPU


def registered() -> dict[tuple[str, str], Backend]:
    return dict(_REGISTRY)


__all__ = ["GENERIC_CPU", "Backend", "backend_for", "backend_key", "register", "registered"]
