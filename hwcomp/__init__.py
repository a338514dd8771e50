"""hwcomp: a hardware-aware compression compiler backend on Apache TVM (Relax).

Pipeline: import (``frontend``) → compress (``passes``) → schedule/tune (``schedules``, ``tune``)
→ build (``build``) → artifact → run/measure (``runtime``).

The top-level names load lazily so that runtime-only uses (a board, ``hwcomp board status``) do not
pay for importing the compiler and PyTorch.
"""

import os as _os

__version__ = "0.1.0"

# TVM's CPU thread pool assumes two hyperthreads per core and starts half as many workers as there
# are CPUs (1 on a 2-core machine without SMT). hwcomp runs its kernels on every CPU the process may
# use unless the user says otherwise; the pool reads this when it first starts.
if hasattr(_os, "sched_getaffinity"):
    _os.environ.setdefault("TVM_NUM_THREADS", str(len(_os.sched_getaffinity(0))))

_LAZY = {
    "compile": "api", "load": "api", "CompileOptions": "api",
    "ArtifactError": "errors", "HwcompError": "errors", "InputError": "errors", "UnsupportedOpError": "errors",
    "Target": "target", "detect_host": "target", "get_target": "target", "target_names": "target",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hwcomp' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
