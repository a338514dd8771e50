"""AArch64 kernels: int8 (``sdot`` / NEON, ``int8.py``) and BSR (the CPU generator with NEON knobs, ``bsr.py``)."""

from hwcomp.schedules.backends import Backend, register


def _int8_provider(target):
    from .int8 import ArmInt8Provider

    return ArmInt8Provider(target)


def _bsr_kernel(target, spec, knobs=None):
    from .bsr import bsr_kernel

    return bsr_kernel(target, spec, knobs)


def _bsr_knob_space(target, block, m) -> list:
    from .bsr import knob_candidates

    return knob_candidates(target.vector_bits, block, m)


BACKEND = register(("cpu", "aarch64"),
                   Backend("arm", int8_provider=_int8_provider, bsr_kernel=_bsr_kernel, bsr_knob_space=_bsr_knob_space))
