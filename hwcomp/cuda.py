"""CUDA device code in artifacts: compiled at build time, loaded by the runtime alone.

Build side. TVM's CUDA codegen emits CUDA C++ and hands it to the runtime's CUDA module factory,
which compiles it through ``tvm_callback_cuda_compile``. Where the CUDA runtime library cannot load
(a build machine with no GPU driver, like CI) the codegen keeps a *fallback* module holding the
raw source, and ``export_library`` stores that source: the GPU machine would then need a CUDA
compiler and TVM's compiler-side Python to load the artifact. Two hooks avoid that:

* :func:`compile_callback` — a context manager, used around ``tvm.compile``, that routes
  ``tvm_callback_cuda_compile`` to nvcc (fatbin) for the duration and restores the previous
  callback afterwards (it is only called where the CUDA runtime is loaded at build time);
* :func:`pack_imports` — an ``fpack_imports`` hook for ``export_library`` that compiles every CUDA
  module still holding source to a fatbin with nvcc and stores the fatbin (format ``fatbin``) in the
  library's embedded module blob instead.

The fatbin holds SASS for the target's ``sm_XX`` and PTX for ``compute_XX``, so newer GPUs can
still JIT it (in the driver, not in TVM).

Runtime side. :func:`load_cuda_runtime` loads ``libtvm_runtime_cuda`` in a runtime-only process
(``TVM_USE_RUNTIME_LIB=1`` does not load device backends), so ``tvm.cuda(0)`` works there.

:func:`describe_library` reads an exported ``model.so`` (no GPU, no TVM needed) and reports the
format of each embedded CUDA module.

Only the standard library is imported at module level: this module works in runtime-only processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

from .errors import HwcompError

FATBIN_MAGIC = b"\x50\xed\x55\xba"  # 0xBA55ED50, little endian
ELF_MAGIC = b"\x7fELF"
_CALLBACK = "tvm_callback_cuda_compile"
_BINARY_FORMATS = ("fatbin", "cubin", "ptx")


# ---- build side --------------------------------------------------------------------------------
def _arch_number(target) -> str:
    """``"sm_90"`` → ``"90"`` (``"sm_90a"`` → ``"90a"``) from a :class:`~hwcomp.target.Target`."""
    arch = str(target.tvm.get("arch", ""))
    if not re.fullmatch(r"sm_\d+[a-z]?", arch):
        raise HwcompError(f"target {target.name!r}: CUDA arch must look like 'sm_90', got {arch!r}")
    return arch[3:]


def nvcc_gencode(target) -> list[str]:
    """nvcc flags: SASS for the target's arch and PTX of the same arch (JIT on newer GPUs)."""
    n = _arch_number(target)
    return ["-gencode", f"arch=compute_{n},code=sm_{n}", "-gencode", f"arch=compute_{n},code=compute_{n}"]


def find_nvcc() -> str | None:
    """The nvcc on PATH, else under ``$CUDA_HOME``/``$CUDA_PATH`` or ``/usr/local/cuda``."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def compile_fatbin(source: str, target) -> bytes:
    """Compile one CUDA C++ translation unit (as TVM generated it) to a fatbin with nvcc.

    Uses ``tvm.support.nvcc.compile_cuda`` so the flags match TVM's own nvcc path.
    """
    nvcc_path = find_nvcc()
    if nvcc_path is None:
        raise HwcompError(
            f"target {target.name!r} needs the CUDA compiler (nvcc) at build time to embed GPU code in "
            "the artifact: install the CUDA toolkit or set CUDA_HOME")
    from tvm.support import nvcc

    env_path = os.environ.get("PATH", "")
    nvcc_dir = str(Path(nvcc_path).parent)
    patch_path = shutil.which("nvcc") is None
    if patch_path:  # compile_cuda runs plain "nvcc"
        os.environ["PATH"] = nvcc_dir + os.pathsep + env_path
    try:
        with target.tvm_target():
            data = nvcc.compile_cuda(source, target_format="fatbin", arch=nvcc_gencode(target),
                                     compiler="nvcc")
    except RuntimeError as e:
        tail = "\n".join(str(e).strip().splitlines()[-8:])
        raise HwcompError(f"nvcc failed on the generated CUDA code for {target.name!r}:\n{tail}") from e
    finally:
        if patch_path:
            os.environ["PATH"] = env_path
    data = bytes(data)
    if not data.startswith(FATBIN_MAGIC):
        raise HwcompError(f"nvcc did not produce a fatbin for {target.name!r} ({len(data)} bytes)")
    return data


@contextlib.contextmanager
def compile_callback(target):
    """Route ``tvm_callback_cuda_compile`` to nvcc (fatbin) inside the block, then restore it.

    TVM calls the callback while building when its CUDA runtime is loaded in this process (a build
    on a GPU machine). Without a GPU driver the codegen keeps the source and :func:`pack_imports`
    compiles it at export instead.
    """
    import tvm_ffi

    previous = tvm_ffi.get_global_func(_CALLBACK, allow_missing=True)

    def callback(code, *_):
        return compile_fatbin(str(code), target)

    tvm_ffi.register_global_func(_CALLBACK, callback, override=True)
    try:
        yield
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(_CALLBACK, previous, override=True)
        else:
            tvm_ffi.remove_global_func(_CALLBACK)


# ---- the module blob embedded in an exported library -------------------------------------------
# tvm-ffi 0.1.x (library_module.cc, ProcessLibraryBin):
#   <nbytes: u64> <indptr: vec<u64>> <child_indices: vec<u64>> then per module
#   <kind: str> [<bytes: str> unless kind == "_lib"]
# A CUDA module's bytes (TVM 0.27, CUDAModuleNode / CUDAFallbackModuleNode::SaveToBytes):
#   <fmt: str> <fmap: map<str, FunctionInfo>> <code: str>
# with FunctionInfo = <name: str> <arg_types: vec<DLDataType(4 bytes)>> <launch_param_tags: vec<str>>
#   <arg_extra_tags: vec<i32>>.  str/vec = <u64 count> then the items.
class _Reader:
    def __init__(self, buf: bytes, pos: int = 0):
        self.buf, self.pos = buf, pos

    def u64(self) -> int:
        if self.pos + 8 > len(self.buf):
            raise ValueError("truncated")
        (v,) = struct.unpack_from("<Q", self.buf, self.pos)
        self.pos += 8
        return v

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError("truncated")
        v = self.buf[self.pos: self.pos + n]
        self.pos += n
        return v

    def str(self) -> bytes:
        return self.raw(self.u64())

    def vec_u64(self) -> list[int]:
        n = self.u64()
        return list(struct.unpack("<" + "Q" * n, self.raw(8 * n)))


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def _str(b: bytes) -> bytes:
    return _u64(len(b)) + b


def parse_cuda_module(data: bytes) -> dict[str, Any]:
    """Split a serialized CUDA module into ``fmt``, ``fmap`` (raw bytes), function names, ``code``."""
    r = _Reader(data)
    fmt = r.str().decode()
    fmap_start = r.pos
    names = []
    for _ in range(r.u64()):
        names.append(r.str().decode())   # key
        r.str()                           # FunctionInfo.name
        r.raw(4 * r.u64())                # arg_types
        for _ in range(r.u64()):          # launch_param_tags
            r.str()
        r.raw(4 * r.u64())                # arg_extra_tags
    fmap = data[fmap_start: r.pos]
    code = r.str()
    if r.pos != len(data):
        raise ValueError(f"{len(data) - r.pos} unexpected bytes after the code")
    return {"fmt": fmt, "fmap": fmap, "functions": names, "code": code}


def build_cuda_module(fmt: str, fmap: bytes, code: bytes) -> bytes:
    return _str(fmt.encode()) + fmap + _str(code)


def parse_blob(blob: bytes) -> tuple[list[int], list[int], list[tuple[str, bytes | None]]]:
    """``(indptr, child_indices, [(kind, module bytes, or None for "_lib"), ...])``."""
    r = _Reader(blob)
    nbytes = r.u64()
    if nbytes != len(blob) - 8:
        raise ValueError(f"blob header says {nbytes} bytes, found {len(blob) - 8}")
    indptr, children = r.vec_u64(), r.vec_u64()
    mods = []
    for _ in range(len(indptr) - 1):
        kind = r.str().decode()
        mods.append((kind, None if kind == "_lib" else r.str()))
    if r.pos != len(blob):
        raise ValueError(f"{len(blob) - r.pos} unexpected bytes at the end of the module blob")
    return indptr, children, mods


def build_blob(indptr: list[int], children: list[int], mods: list[tuple[str, bytes | None]]) -> bytes:
    body = _u64(len(indptr)) + struct.pack("<" + "Q" * len(indptr), *indptr)
    body += _u64(len(children)) + struct.pack("<" + "Q" * len(children), *children)
    for kind, data in mods:
        body += _str(kind.encode())
        if data is not None:
            body += _str(data)
    return _u64(len(body)) + body


def compile_blob(blob: bytes, compile_fn) -> tuple[bytes, list[dict[str, Any]]]:
    """Replace every CUDA module holding source (fmt ``cuda``) by ``compile_fn(source)`` (fmt fatbin)."""
    try:
        indptr, children, mods = parse_blob(blob)
        out, report = [], []
        for kind, data in mods:
            if kind == "cuda" and data is not None:
                m = parse_cuda_module(data)
                if m["fmt"] == "cuda":
                    binary = compile_fn(m["code"].decode())
                    data = build_cuda_module("fatbin", m["fmap"], binary)
                    report.append({"functions": m["functions"], "source_bytes": len(m["code"]),
                                   "fatbin_bytes": len(binary)})
            out.append((kind, data))
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        raise HwcompError(f"unexpected layout of TVM's packed module blob ({e}); the CUDA packer "
                          "supports apache-tvm 0.27 with apache-tvm-ffi 0.1.14") from e
    return build_blob(indptr, children, out), report


_C_ARRAY = re.compile(r"(const unsigned char (\w+)\[)(\d+)(\] = \{)(.*?)(\n\};)", re.DOTALL)


def _c_array(data: bytes) -> str:
    rows = []
    for i in range(0, len(data), 20):
        rows.append("  " + "".join(f"0x{b:02x}," for b in data[i: i + 20]))
    return "\n" + "\n".join(rows)


def pack_imports(target, report: list | None = None):
    """An ``fpack_imports`` hook for ``export_library`` that embeds nvcc fatbins.

    It packs the imports the way TVM does (``runtime.ModulePackImportsToC``), with each CUDA module
    that still holds source compiled to a fatbin. ``report`` (a list), when given, receives one dict
    per compiled module.
    """

    def fpack_imports(mod, is_system_lib, prefix, workspace_dir):
        import tvm_ffi

        blob = bytes(tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(mod).numpy())
        new_blob, compiled = compile_blob(blob, lambda src: compile_fatbin(src, target))
        if report is not None:
            report.extend(compiled)
        c_src = tvm_ffi.get_global_func("runtime.ModulePackImportsToC")(mod, is_system_lib, prefix)
        matches = list(_C_ARRAY.finditer(c_src))
        if len(matches) != 1:
            raise HwcompError("unexpected layout of TVM's packed-imports C source "
                              f"({len(matches)} byte arrays)")
        m = matches[0]
        c_src = (c_src[: m.start()] + m.group(1) + str(len(new_blob)) + m.group(4) + _c_array(new_blob)
                 + m.group(6) + c_src[m.end():])
        path = os.path.join(workspace_dir, f"{prefix}devc.c")
        with open(path, "w") as f:
            f.write(c_src)
        return path

    return fpack_imports


def describe_library(path: str | Path, with_code: bool = False) -> list[dict[str, Any]]:
    """The CUDA modules embedded in an exported library: format, functions, code size, fatbin archs.

    Reads the file only (works without a GPU and without TVM). A module of format ``cuda`` holds
    source, which the GPU machine would have to compile when loading. ``with_code`` adds the
    module's code (source or binary) as ``code``.
    """
    data = Path(path).read_bytes()
    out = []
    key = _str(b"cuda")
    start = 0
    while (i := data.find(key, start)) >= 0:
        start = i + 1
        r = _Reader(data, i + len(key))
        try:
            n = r.u64()
            if n > len(data) - r.pos:
                continue
            m = parse_cuda_module(r.raw(n))
        except (ValueError, struct.error, UnicodeDecodeError):
            continue
        if m["fmt"] not in ("cuda", *_BINARY_FORMATS):
            continue
        code = m["code"]
        entry = {"fmt": m["fmt"], "functions": m["functions"], "code_bytes": len(code),
                 "is_fatbin": code.startswith(FATBIN_MAGIC), "is_source": m["fmt"] == "cuda"}
        if entry["is_fatbin"]:
            entry["fatbin_entries"] = fatbin_entries(code)
        if with_code:
            entry["code"] = code
        out.append(entry)
        start = r.pos
    return out


def fatbin_entries(fatbin: bytes) -> list[dict[str, Any]]:
    """The entries of a fatbin: ``{"kind": "elf"|"ptx", "arch": "sm_90"}`` each.

    Layout (as nvcc writes it): header ``<magic u32><version u16><header size u16><size u64>``, then
    entries ``<kind u16><version u16><header size u32><payload size u64>... <arch u32 at +28>``.
    """
    if not fatbin.startswith(FATBIN_MAGIC) or len(fatbin) < 16:
        return []
    _, _, hsize, size = struct.unpack_from("<IHHQ", fatbin, 0)
    pos, end = hsize, min(len(fatbin), hsize + size)
    entries = []
    while pos + 32 <= end:
        kind, _, ehsize, payload = struct.unpack_from("<HHIQ", fatbin, pos)
        (arch,) = struct.unpack_from("<I", fatbin, pos + 28)
        if ehsize == 0:
            break
        entries.append({"kind": {1: "ptx", 2: "elf"}.get(kind, str(kind)), "arch": f"sm_{arch}"})
        pos += ehsize + payload
    return entries


# ---- runtime side ------------------------------------------------------------------------------
def _cudart_candidates() -> list[Path]:
    dirs = []
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            dirs += [Path(root) / "lib64", Path(root) / "lib"]
    try:  # pip's CUDA runtime (what PyTorch's CUDA wheels use)
        import importlib.util

        spec = importlib.util.find_spec("nvidia")
        for base in (spec.submodule_search_locations or []) if spec else []:
            dirs += [Path(base) / "cu13" / "lib", Path(base) / "cuda_runtime" / "lib"]
    except (ImportError, ValueError):
        pass
    return [d / "libcudart.so.13" for d in dirs if (d / "libcudart.so.13").is_file()]


def load_cuda_runtime() -> tuple[bool, str]:
    """Make TVM's CUDA runtime available in this process (``libtvm_runtime_cuda``).

    A full ``import tvm`` loads it already; a runtime-only process (``TVM_USE_RUNTIME_LIB=1``) does
    not. Returns ``(True, "")`` or ``(False, why)``. Looks for ``libcudart.so.13`` in the CUDA
    toolkit and pip's ``nvidia`` packages when the loader cannot find it.
    """
    import tvm_ffi
    from tvm import base

    if tvm_ffi.get_global_func("device_api.cuda", allow_missing=True) is not None:
        return True, ""
    from tvm_ffi.libinfo import load_lib_ctypes

    runtime_dir = Path(base._LOADED_LIBS["tvm_runtime"]._name).resolve().parent

    def load():
        base._LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")

    try:
        load()
    except (OSError, RuntimeError) as e:
        first = str(e)
        if "libcudart" not in first:
            return False, f"cannot load libtvm_runtime_cuda: {first}"
        for cand in _cudart_candidates():
            try:
                ctypes.CDLL(str(cand), mode=ctypes.RTLD_GLOBAL)
                load()
                break
            except OSError:
                continue
        else:
            return False, f"cannot load libtvm_runtime_cuda (no libcudart.so.13 found): {first}"
    if tvm_ffi.get_global_func("device_api.cuda", allow_missing=True) is None:
        return False, "libtvm_runtime_cuda loaded but registered no CUDA device API"
    return True, ""


__all__ = [
    "compile_callback", "compile_fatbin", "describe_library", "fatbin_entries", "find_nvcc",
    "load_cuda_runtime", "nvcc_gencode", "pack_imports",
]
