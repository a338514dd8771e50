"""hwcomp: a hardware-aware compression compiler backend on Apache TVM (Relax).

Pipeline: import (``frontend``) → compress (``passes``) → schedule/tune (``schedules``, ``tune``)
→ build (``build``) → artifact → run/measure (``runtime``).

The top-level names load lazily so that runtime-only uses (a board, ``hwcomp board status``) do not
pay for importing the compiler and PyTorch.
"""

__version__ = "0.1.0"

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
