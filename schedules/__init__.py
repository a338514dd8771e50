"""Per-target kernels (``hwcomp.schedules``). Importing the package registers each target family's
:class:`~hwcomp.schedules.backends.Backend` (``x86``, ``arm``, ``cuda``); look one up with
:func:`hwcomp.schedules.backends.backend_for`."""

from . import arm, cuda, x86  # noqa: F401  (each registers its backend)
