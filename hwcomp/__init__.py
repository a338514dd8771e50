"""hwcomp: a hardware-aware compression compiler backend on Apache TVM (Relax).

Pipeline: import (``frontend``) → compress (``passes``) → schedule/tune (``schedules``, ``tune``)
→ build (``build``) → artifact → run/measure (``runtime``).
"""

__version__ = "0.1.0"

from .api import CompileOptions, compile, load  # noqa: E402,A004
from .errors import ArtifactError, HwcompError, InputError, UnsupportedOpError  # noqa: E402
from .target import Target, detect_host, get_target, target_names  # noqa: E402

__all__ = [
    "ArtifactError", "CompileOptions", "HwcompError", "InputError", "Target", "UnsupportedOpError",
    "__version__", "compile", "detect_host", "get_target", "load", "target_names",
]
