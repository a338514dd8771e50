"""Device descriptions: the data in ``targets/*.toml`` plus the detected ``host``.

A :class:`Target` is what makes the compiler hardware-aware: the TVM target dict to generate code
with, and the capabilities the passes and schedules read (vector width, int8 dot-product kind,
preferred sparse block shape, the cross compiler to export with, the RPC key boards register under).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import HwcompError

INT8_DOT_KINDS = ("vnni", "avx-vnni", "sdot", "dp4a", "imma", "none")


class UnknownTargetError(HwcompError):
    """A target name that is neither a shipped description, ``host`` nor a ``.toml`` path."""


@dataclasses.dataclass(frozen=True)
class CpuCaps:
    """What the CPU schedules read of a target (``schedules/cpu``): capability as data, one value
    passed through the rule plumbing instead of loose scalars. ``vector_bits``: SIMD width;
    ``registers``: architectural vector registers (size register tiles); ``l2_bytes``: one core's L2
    (None: unknown, the schedules assume a small one)."""

    vector_bits: int
    registers: int = 16
    l2_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class Target:
    """One device, as the compiler sees it.

    ``tvm`` is TVM's target dict (``{"kind": "llvm", "mcpu": ...}``); ``host`` the host half of a
    GPU target. ``arch`` is the CPU architecture the exported library runs on (ELF machine).
    ``l2_bytes``: one core's L2 cache (``l2_kb`` in a description; the host's from Linux), or None
    where unknown: the schedules then assume a small one.
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
    l2_bytes: int | None = None

    @property
    def is_gpu(self) -> bool:
        return self.tvm["kind"] == "cuda"

    @property
    def fp32_lanes(self) -> int:
        return self.vector_bits // 32

    @property
    def vector_registers(self) -> int:
        """Architectural vector registers: 32 on aarch64 and with AVX-512, 16 with AVX2/AVX."""
        return 32 if self.arch == "aarch64" or self.vector_bits >= 512 else 16

    @property
    def cpu_caps(self) -> CpuCaps:
        """The capabilities the CPU schedules read (:class:`CpuCaps`)."""
        return CpuCaps(self.vector_bits, self.vector_registers, self.l2_bytes)

    @property
    def conv_block(self) -> int:
        """Channels per block of the NCHW[x]c convolution layout: two fp32 vectors (16 on AVX2,
        32 on AVX-512, 8 on NEON), so each output pixel's block is two independent FMA chains."""
        return 2 * self.fp32_lanes

    @property
    def dense_panels(self) -> tuple[int, ...]:
        """Column-panel widths a packed matmul weight may take, preferred first
        (``passes.pack_dense``). With AVX-512's 32 registers, three zmm per panel: an 8 x 48 register
        tile (24 accumulators) reads 3 weight vectors per 24 FMAs where 8 x 32 reads 2 per 16, and
        the weight panel streams from L2 (measured round-robin on an AVX-512 Xeon, 2 threads, BERT
        and ViT Linears: 1.06-1.08x). Elsewhere the two-vector width, ``conv_block``."""
        if self.vector_bits >= 512 and self.vector_registers >= 32:
            return (3 * self.fp32_lanes, self.conv_block)
        return (self.conv_block,)

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


# The fields of a target description (``targets/*.toml``) and the TOML types they take.
_FIELDS: dict[str, tuple[type, ...]] = {
    "description": (str,), "arch": (str,), "vector_bits": (int,), "int8_dot": (str,), "sparse_block": (list,),
    "cross_compiler": (str,), "rpc_key": (str,), "features": (list,), "tvm": (dict,), "host": (dict,),
    "l2_kb": (int,),
}
_REQUIRED = ("arch", "vector_bits", "sparse_block", "tvm")
ARCHES = ("x86_64", "aarch64")
TVM_KINDS = ("llvm", "cuda")  # what hwcomp's pipeline schedules and exports
_TRIPLE_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
_EXAMPLES = {"x86_64": ("haswell, skylake-avx512, znver3", "+avx2, +fma, +avx512f"),
             "aarch64": ("cortex-a72, cortex-a76, neoverse-v1", "+neon, +dotprod, +i8mm")}
_TOML_TYPE = {str: "a string", int: "an integer", list: "an array", dict: "a table", bool: "a boolean",
              float: "a float"}


def _examples(triple: str) -> tuple[str, str]:
    return _EXAMPLES[_TRIPLE_ARCH.get(triple.split("-")[0].lower(), "x86_64")]


class _Invalid(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(f"field {field!r}: {message}")


def _type_name(v) -> str:
    return _TOML_TYPE.get(type(v), type(v).__name__)


def _int(v, field: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise _Invalid(field, f"expected an integer, got {_type_name(v)} {v!r}")
    if not lo <= v <= hi:
        raise _Invalid(field, f"must be between {lo} and {hi}, got {v}")
    return v


def _str(v, field: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(v, str):
        raise _Invalid(field, f"expected a string, got {_type_name(v)} {v!r}")
    if choices is not None and v not in choices:
        raise _Invalid(field, f"must be one of {', '.join(choices)}, got {v!r}")
    if not v.strip() or "\x00" in v:
        raise _Invalid(field, f"must be a non-empty string, got {v!r}")
    return v


def _str_list(v, field: str) -> list[str]:
    if not isinstance(v, list):
        raise _Invalid(field, f"expected an array of strings, got {_type_name(v)} {v!r}")
    for i, item in enumerate(v):
        _str(item, f"{field}[{i}]")
    return list(v)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (LLVM writes "'+x' is not a recognized feature" there itself)."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@functools.lru_cache(maxsize=256)
def _llvm_knows_feature(feature: str, triple: str) -> bool:
    """True when LLVM enables ``feature`` for ``triple`` given ``+feature`` (an unknown one it ignores)."""
    import tvm
    from tvm.target import codegen

    with _quiet_stderr():
        probe = tvm.target.Target({"kind": "llvm", "mtriple": triple, "mattr": [f"+{feature}"]})
        return feature in codegen.llvm_get_cpu_features(probe)


def _check_tvm_table(d: dict, field: str, arch: str, host_side: bool) -> dict:
    """Validate one TVM target table (``[tvm]`` or ``[host]``) and return a copy of it."""
    import tvm
    from tvm.target import codegen

    if "kind" not in d:
        raise _Invalid(f"{field}.kind", "missing (llvm for a CPU, cuda for an NVIDIA GPU)")
    kinds = ("llvm",) if host_side else TVM_KINDS
    kind = _str(d["kind"], f"{field}.kind")
    if kind not in kinds:
        where = "for the host of a GPU target" if host_side else "hwcomp compiles for"
        raise _Invalid(f"{field}.kind", f"{kind!r} is not a TVM target kind {where} ({', '.join(kinds)})")
    if "num-cores" in d:
        _int(d["num-cores"], f"{field}.num-cores", 1, 4096)
    if kind == "llvm":
        triple = None
        if "mtriple" in d:
            triple = _str(d["mtriple"], f"{field}.mtriple")
            triple_arch = _TRIPLE_ARCH.get(triple.split("-")[0].lower())
            if triple_arch is None:
                raise _Invalid(f"{field}.mtriple", f"{triple!r} is not an x86_64 or aarch64 triple "
                                                   "(e.g. x86_64-linux-gnu, aarch64-linux-gnu)")
            if triple_arch != arch:
                raise _Invalid(f"{field}.mtriple", f"{triple!r} is for {triple_arch}, but arch is {arch!r}")
        else:
            here = codegen.llvm_get_system_triple()
            if _TRIPLE_ARCH.get(here.split("-")[0].lower()) != arch:
                raise _Invalid(f"{field}.mtriple", f"missing: without it LLVM builds for this machine ({here}), "
                                                   f"but arch is {arch!r}")
        if "mcpu" in d:
            mcpu = _str(d["mcpu"], f"{field}.mcpu")
            check_triple = triple or codegen.llvm_get_system_triple()
            if not codegen.llvm_is_valid_cpu(mcpu, check_triple):
                raise _Invalid(f"{field}.mcpu", f"{mcpu!r} is not a CPU LLVM knows for {check_triple} "
                                                f"(e.g. {_examples(check_triple)[0]})")
        if "mattr" in d:
            for i, feat in enumerate(_str_list(d["mattr"], f"{field}.mattr")):
                if not re.fullmatch(r"[+-][A-Za-z0-9][A-Za-z0-9._-]*", feat):
                    raise _Invalid(f"{field}.mattr[{i}]", f"expected +FEATURE or -FEATURE, got {feat!r}")
                check_triple = triple or codegen.llvm_get_system_triple()
                if not _llvm_knows_feature(feat[1:], check_triple):
                    raise _Invalid(f"{field}.mattr[{i}]", f"LLVM knows no CPU feature {feat[1:]!r} for "
                                                          f"{check_triple} (e.g. {_examples(check_triple)[1]})")
    elif kind == "cuda" and "arch" in d:
        sm = _str(d["arch"], f"{field}.arch")
        if not re.fullmatch(r"sm_[0-9]{2,3}[a-z]?", sm):
            raise _Invalid(f"{field}.arch", f"expected a CUDA architecture like sm_80, got {sm!r}")
    try:  # every other option (and its type) as TVM itself checks it
        tvm.target.Target(dict(d))
    except (ValueError, TypeError) as e:
        msg = (str(e).strip().splitlines() or [""])[0]
        msg = msg.split(". Target creation from config dict failed")[0]
        raise _Invalid(field, f"TVM rejects it: {msg}") from None
    return dict(d)


def _parse(name: str, text: str, origin: str) -> Target:
    """A :class:`Target` from the text of a description; every field is checked, and anything wrong
    raises :class:`HwcompError` naming ``origin`` and the field."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise HwcompError(f"invalid target description {origin}: not valid TOML: {e}") from None
    try:
        unknown = sorted(set(raw) - set(_FIELDS))
        if unknown:
            raise _Invalid(unknown[0], f"unknown field (known: {', '.join(_FIELDS)})")
        for f in _REQUIRED:
            if f not in raw:
                raise _Invalid(f, "missing")
        for f, value in raw.items():
            if not isinstance(value, _FIELDS[f]) or isinstance(value, bool):
                want = " or ".join(_TOML_TYPE[t] for t in _FIELDS[f])
                raise _Invalid(f, f"expected {want}, got {_type_name(value)} {value!r}")
        arch = _str(raw["arch"], "arch", ARCHES)
        vector_bits = _int(raw["vector_bits"], "vector_bits", 32, 2048)
        if vector_bits % 32:
            raise _Invalid("vector_bits", f"must be a multiple of 32, got {vector_bits}")
        int8_dot = _str(raw.get("int8_dot", "none"), "int8_dot", INT8_DOT_KINDS)
        block = raw["sparse_block"]
        if len(block) != 2:
            raise _Invalid("sparse_block", f"expected [ROWS, COLS], got {block!r}")
        sparse_block = (_int(block[0], "sparse_block[0]", 1, 1024), _int(block[1], "sparse_block[1]", 1, 1024))
        description = _str(raw.get("description", name), "description")
        cross_compiler = _str(raw["cross_compiler"], "cross_compiler") if "cross_compiler" in raw else None
        rpc_key = _str(raw["rpc_key"], "rpc_key") if "rpc_key" in raw else None
        features = tuple(_str_list(raw.get("features", []), "features"))
        l2_bytes = _int(raw["l2_kb"], "l2_kb", 16, 1 << 20) * 1024 if "l2_kb" in raw else None
        tvm_dict = _check_tvm_table(raw["tvm"], "tvm", arch, host_side=False)
        host = None
        if "host" in raw:
            if tvm_dict["kind"] != "cuda":
                raise _Invalid("host", "only a GPU target (tvm.kind = \"cuda\") has a host table")
            host = _check_tvm_table(raw["host"], "host", arch, host_side=True)
    except _Invalid as e:
        raise HwcompError(f"invalid target description {origin}: {e}") from None
    if tvm_dict["kind"] == "llvm":
        tvm_dict.setdefault("num-cores", _physical_cores())
    if host is not None:
        host.setdefault("num-cores", _physical_cores())
    return Target(name=name, description=description, arch=arch, tvm=tvm_dict, host=host, vector_bits=vector_bits,
                  int8_dot=int8_dot, sparse_block=sparse_block, cross_compiler=cross_compiler, rpc_key=rpc_key,
                  features=features, l2_bytes=l2_bytes)


def read_target_file(path: str | Path) -> Target:
    """A target from a ``.toml`` description on disk (what ``-t file.toml`` reads)."""
    p = Path(path)
    if not p.is_file():
        raise HwcompError(f"target description {str(p)!r} "
                          + ("is a directory, not a .toml file" if p.is_dir() else "does not exist"))
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise HwcompError(f"cannot read target description {str(p)!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise HwcompError(f"invalid target description {p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return _parse(p.stem, text, str(p))


def get_target(name_or_path: str | Target) -> Target:
    """Resolve a target by friendly name (``hwcomp targets`` lists them), ``host``, or a .toml path."""
    if isinstance(name_or_path, Target):
        return name_or_path
    if name_or_path == "host":
        return detect_host()
    if name_or_path.endswith(".toml"):
        return read_target_file(name_or_path)
    f = _targets_dir() / f"{name_or_path}.toml"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name_or_path) or not f.is_file():
        raise UnknownTargetError(
            f"unknown target {name_or_path!r}; valid targets: {', '.join(target_names())} "
            "(or a path to a .toml description)"
        )
    return _parse(name_or_path, f.read_text(), str(f))


def require_target(target, who: str) -> Target:
    """``target`` itself when it is a :class:`Target`. Below the API a target is already resolved (the
    API, the CLI and the benchmarks call :func:`get_target` once), so a name is refused here."""
    if not isinstance(target, Target):
        raise TypeError(f"{who} takes a hwcomp Target, got {target!r}; resolve a name with hwcomp.get_target()")
    return target


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


def _amx_permitted() -> bool:
    """Whether Linux lets this process use AMX tile data (``arch_prctl(ARCH_REQ_XCOMP_PERM,
    XFEATURE_XTILEDATA)``, which also grants it; the compiled kernels ask again, a no-op then). A
    seccomp filter or an old kernel says no: ``host`` then compiles without the tile unit."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(158, 0x1023, 18) == 0  # SYS_arch_prctl on x86-64
    except (OSError, AttributeError):
        return False


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
        amx = {"amx_tile", "amx_int8"} <= flags and _amx_permitted()
        llvm_amx = codegen.llvm_cpu_has_features(["amx-int8"], tvm.target.Target(tvm_dict))
        if amx != llvm_amx:
            # LLVM can name a VM's CPU after an older model (this KVM Xeon: "rocketlake") while the
            # kernel exposes the tile unit, or after an AMX model where Linux refuses the tile data
            # (seccomp, an old kernel): the int8 kernels use AMX exactly where it runs here.
            tvm_dict["mattr"] = ["+amx-tile", "+amx-int8"] if amx else ["-amx-tile", "-amx-int8"]
        features = tuple(sorted(f for f in flags if f.startswith(("avx", "fma", "sse4", "amx"))))
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
        l2_bytes=_l2_bytes(),
    )


def _l2_bytes(cpu: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """One core's level-2 data (or unified) cache from Linux's sysfs, None where it does not say."""
    try:
        for index in sorted(cpu.glob("index*")):
            if (index / "level").read_text().strip() == "2" and \
                    (index / "type").read_text().strip() in ("Data", "Unified"):
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        return None
    return None
