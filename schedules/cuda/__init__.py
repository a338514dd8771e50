"""CUDA kernels: int8 (``dp4a``, ``int8.py``) and BSR (``bsr.py``; not tuned by the BSR pass)."""

from hwcomp.schedules.backends import Backend, register


def _int8_provider(target):
    from .int8 import CudaInt8Provider

    return CudaInt8Provider(target)


def _bsr_kernel(target, spec, knobs=None):
    from .bsr import bsr_kernel

    return bsr_kernel(target, spec, knobs)


BACKEND = register(("gpu", "cuda"),
                   Backend("cuda", int8_provider=_int8_provider, bsr_kernel=_bsr_kernel,
                           bsr_knob_space=lambda target, block, m: [], bsr_knobs_from=lambda d: None))
