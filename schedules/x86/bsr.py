"""BSR × dense kernels for x86 targets: the generic CPU generator (``schedules/cpu/bsr.py``) with the
x86 vector width (AVX2: 256 bits, 16 vector registers), taken from the target's description."""

from __future__ import annotations

from hwcomp.schedules.bsr_spec import BsrSpec
from hwcomp.schedules.cpu.bsr import (
    ACTIVATIONS,
    BSRKnobs,
    bsr_kernel,
    cpu_bsr_kernel,
    cpu_bsr_source,
    default_knobs,
    epilogue_expr,
    knob_candidates,
)

__all__ = ["ACTIVATIONS", "BSRKnobs", "BsrSpec", "bsr_kernel", "cpu_bsr_kernel", "cpu_bsr_source", "default_knobs",
           "epilogue_expr", "knob_candidates"]
