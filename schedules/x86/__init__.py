"""x86 kernels: int8 (AVX2 / VNNI, ``int8.py``) and BSR (the generic CPU generator, ``bsr.py``)."""

from hwcomp.schedules.backends import Backend, register


def _int8_provider(target):
    from .int8 import X86Int8Provider

    return X86Int8Provider(target)


BACKEND = register(("cpu", "x86_64"), Backend("x86", int8_provider=_int8_provider))
