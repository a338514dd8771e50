"""BSR × dense kernels for AArch64 (NEON) targets.

The loop structure is the one of the generic CPU kernel (``schedules/cpu/bsr.py``: parallel block rows, an
``mt × r`` register accumulator, vectors over the block's ``r`` output rows, GELU/ReLU/bias epilogue);
only the knobs differ. With 128-bit NEON the preferred block is 4x1 (one vector per block row), and
AArch64 has 32 vector registers, so :func:`default_knobs` gives a taller accumulator tile (16 rows for
4x1) than on AVX2.
"""

from __future__ import annotations

from hwcomp.schedules.bsr_spec import BsrSpec
from hwcomp.schedules.cpu.bsr import (
    BSRKnobs,
    cpu_bsr_kernel,
    cpu_bsr_source,
    default_knobs,
    knob_candidates,
)

__all__ = ["BSRKnobs", "BsrSpec", "bsr_kernel", "cpu_bsr_source", "default_knobs", "knob_candidates"]


def bsr_kernel(target, spec: BsrSpec, knobs: BSRKnobs | None = None):
    """AArch64 kernel for an hwcomp :class:`~hwcomp.target.Target` (NEON: ``vector_bits`` = 128)."""
    return cpu_bsr_kernel(spec, knobs or default_knobs(target.vector_bits, spec.block, spec.m),
                          target.num_cores, target.vector_bits)
