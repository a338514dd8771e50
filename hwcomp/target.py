"""Device descriptions: the data in ``targets/*.toml`` plus the detected ``host``.

A :class:`Target` is what makes the compiler hardware-aware: the TVM target dict to generate code
with, and the capabilities the passes and schedules read (vector width, int8 dot-product kind,
preferred sparse block shape, the cross compiler to export with, the RPC key boards register under).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import HwcompError

INT8_DOT_KINDS = ("vnni", "avx-vnni", "sdot", "dp4a", "imma", "none")


class UnknownTargetError(HwcompError):
    """A target name that is neither a shipped description, ``host`` nor a ``.toml`` path."""


@dataclasses.dataclass(frozen=True)
class Target:
    """One device, as the compiler sees it.

    ``tvm`` is TVM's target dict (``{"kind": "llvm", "mcpu": ...}``); ``host`` the host half of a
    GPU target. ``arch`` is the CPU architecture the exported library runs on (ELF machine).
    """

    name: str
    description: str
    arch: str
    tvm: dict[str, Any]
    vector_bits: int
    int8_dot: str
    sparse_block: tuple[int, int]
    host: dict[str, Any] | None = None
    cross_compiler: str | None = None
    rpc_key: str | None = None
    features: tuple[str, ...] = ()

    @property
    def is_gpu(self) -> bool:
        return self.tvm["kind"] == "cuda"

    @property
    def fp32_lanes(self) -> int:
        return self.vector_bits // 32

    @property
    def num_cores(self) -> int:
        return int((self.host or self.tvm).get("num-cores", os.cpu_count() or 1))

    def runs_here(self) -> bool:
        """True when an artifact for this target can be loaded by this process (same arch, CPU)."""
        return not self.is_gpu and self.arch == platform.machine()

    def tvm_target(self):
        """The ``tvm.target.Target`` (with host for GPU targets)."""
        import tvm

        if self.host is not None:
            return tvm.target.Target(self.tvm, host=self.host)
        return tvm.target.Target(self.tvm)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sparse_block"] = list(self.sparse_block)
        d["features"] = list(self.features)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Target:
        d = dict(d)
        d["sparse_block"] = tuple(d["sparse_block"])
        d["features"] = tuple(d.get("features", ()))
        return cls(**d)


def _targets_dir():
    return resources.files("hwcomp.targets")


def target_names() -> list[str]:
    """Every name :func:`get_target` accepts: ``host`` and the shipped descriptions."""
    names = sorted(p.name[: -len(".toml")] for p in _targets_dir().iterdir() if p.name.endswith(".toml"))
    return ["host", *names]


def _parse(name: str, text: str, origin: str) -> Target:
    try:
        raw = tomllib.loads(text)
        tvm_dict = dict(raw["tvm"])
        if tvm_dict.get("kind") == "llvm":
            tvm_dict.setdefault("num-cores", _physical_cores())
        host = dict(raw["host"]) if "host" in raw else None
        if host is not None:
            host.setdefault("num-cores", _physical_cores())
        int8_dot = raw.get("int8_dot", "none")
        if int8_dot not in INT8_DOT_KINDS:
            raise ValueError(f"int8_dot must be one of {INT8_DOT_KINDS}, got {int8_dot!r}")
        return Target(
            name=name,
            description=raw.get("description", name),
            arch=raw["arch"],
            tvm=tvm_dict,
            host=host,
            vector_bits=int(raw["vector_bits"]),
            int8_dot=int8_dot,
            sparse_block=tuple(int(v) for v in raw["sparse_block"]),
            cross_compiler=raw.get("cross_compiler"),
            rpc_key=raw.get("rpc_key"),
            features=tuple(raw.get("features", ())),
        )
    except (KeyError, ValueError, TypeError, tomllib.TOMLDecodeError) as e:
        raise HwcompError(f"invalid target description {origin}: {e}") from e


def get_target(name_or_path: str | Target) -> Target:
    """Resolve a target by friendly name (``hwcomp targets`` lists them), ``host``, or a .toml path."""
    if isinstance(name_or_path, Target):
        return name_or_path
    if name_or_path == "host":
        return detect_host()
    if name_or_path.endswith(".toml") and Path(name_or_path).is_file():
        p = Path(name_or_path)
        return _parse(p.stem, p.read_text(), str(p))
    f = _targets_dir() / f"{name_or_path}.toml"
    if not f.is_file():
        raise UnknownTargetError(
            f"unknown target {name_or_path!r}; valid targets: {', '.join(target_names())} "
            "(or a path to a .toml description)"
        )
    return _parse(name_or_path, f.read_text(), str(f))


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect_host() -> Target:
    """Describe the machine this process runs on.

    The CPU name LLVM reports can promise more than a virtual machine exposes, so the vector width
    and int8 support come from the kernel's CPU flags, and the mcpu is lowered to a generic x86-64
    level when the named CPU would emit instructions the flags do not list.
    """
    import tvm
    from tvm.target import codegen

    machine = platform.machine()
    flags = _cpu_flags()
    mcpu = codegen.llvm_get_system_cpu()
    cores = _physical_cores()
    if machine == "x86_64":
        has512 = "avx512f" in flags
        vector_bits = 512 if has512 else 256 if "avx2" in flags else 128
        int8_dot = "vnni" if "avx512_vnni" in flags else "avx-vnni" if "avx_vnni" in flags else "none"
        tvm_dict = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu, "num-cores": cores}
        probe = tvm.target.Target(tvm_dict)
        if codegen.llvm_cpu_has_features(["avx512f"], probe) and not has512:
            tvm_dict["mcpu"] = "x86-64-v3" if "avx2" in flags else "x86-64"
        features = tuple(sorted(f for f in flags if f.startswith(("avx", "fma", "sse4"))))
        block = (vector_bits // 32, 1)
    elif machine == "aarch64":
        vector_bits = 128
        int8_dot = "sdot" if "asimddp" in flags else "none"
        mattr = ["+neon"] + (["+dotprod"] if int8_dot == "sdot" else [])
        tvm_dict = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": mattr,
                    "num-cores": cores}
        features = tuple(sorted(flags & {"asimd", "asimddp", "i8mm", "sve", "bf16"}))
        block = (4, 1)
    else:
        raise HwcompError(f"host architecture {machine!r} is not supported (x86_64 and aarch64 are)")
    return Target(
        name="host",
        description=f"this machine ({machine}, {mcpu}, {cores} cores)",
        arch=machine,
        tvm=tvm_dict,
        vector_bits=vector_bits,
        int8_dot=int8_dot,
        sparse_block=block,
        rpc_key=None,
        features=features,
    )
