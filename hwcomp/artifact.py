"""The compiled artifact: a directory with the library, the weights and ``manifest.json``.

This module is the runtime side: it imports only ``tvm.runtime`` (it works in a process started with
``TVM_USE_RUNTIME_LIB=1``, i.e. without the 259 MB compiler library), so a board can load artifacts.

Layout::

    model.so        compiled kernels + Relax VM bytecode (no weights)
    weights.npz     weights, in the order main() takes them after the inputs
    reference.npz   example inputs and the framework's outputs on them (for correctness checks)
    manifest.json   format, versions, target, I/O specs, sha256 of every file, compression, fidelity

The manifest's schema, archives and output folders are in :mod:`hwcomp.artifact_files`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tarfile
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .artifact_files import (KNOWN_FILES, LIB, MANIFEST, MAX_ARCHIVE_BYTES, REFERENCE, WEIGHTS, extract_archive,
                             sha256, validate_manifest)
from .errors import ArtifactError, InputError, error_line
from .metrics import cosine, max_abs_error  # NumPy only; cosine re-exported

#: The path and the (device, inode) of every shared library this process has loaded → its sha256.
#: The dynamic loader keeps a library for the life of the process and hands it back for any later
#: dlopen of the same path or the same file identity — even after the file was deleted and a new one
#: took its path or its inode number (an artifact rebuilt in place): the old code would then run
#: with the new weights.
_LOADED: dict[object, str] = {}
_LOADED_LOCK = threading.Lock()


def load_shared_library(path: Path, digest: str):
    """``tvm.runtime.load_module(path)``, through a copy named by ``digest`` when this process already
    loaded a different library from that path or with the file identity ``path`` has now."""
    import tvm

    def keys(p: Path) -> tuple:
        st = p.stat()
        return str(p.resolve()), (st.st_dev, st.st_ino)

    with _LOADED_LOCK:
        if any(_LOADED.get(k, digest) != digest for k in keys(path)):
            from .records.locations import cache_root

            copy = cache_root() / "libs" / f"{digest[:20]}.so"
            if not copy.is_file():
                copy.parent.mkdir(parents=True, exist_ok=True)
                tmp = copy.with_suffix(f".{os.getpid()}.tmp")
                shutil.copyfile(path, tmp)
                os.replace(tmp, copy)
            path = copy
        module = tvm.runtime.load_module(str(path))
        for k in keys(path):
            _LOADED[k] = digest
    return module


def check_shapes(specs: list[dict], dynamic: dict | None, arrays) -> dict[str, int]:
    """Check each array's shape against its spec: static dimensions exactly, a symbolic one within
    its range in ``dynamic`` (``{symbol: {"min", "max"}}``), and every input naming one symbol with
    the same length there. Returns the symbols' lengths; raises :class:`InputError`."""
    dynamic = dynamic or {}
    sizes: dict[str, tuple[int, str]] = {}
    for s, a in zip(specs, arrays):
        shape, want = tuple(np.shape(a)), tuple(s["shape"])
        if len(shape) != len(want) or any(isinstance(d, int) and d != n for d, n in zip(want, shape)):
            raise InputError(f"input {s['name']!r}: shape {shape} but the model was compiled for {want}")
        for i, (d, n) in enumerate(zip(want, shape)):
            if isinstance(d, int):
                continue
            r = dynamic.get(d, {"min": 0, "max": None})
            if n < r["min"] or (r["max"] is not None and n > r["max"]):
                hi = r["max"] if r["max"] is not None else "inf"
                raise InputError(f"input {s['name']!r}: dimension {i} is {n}, outside {d}'s range "
                                 f"{r['min']}..{hi} the model was compiled for (shape {want})")
            first = sizes.setdefault(d, (n, s["name"]))
            if first[0] != n:
                raise InputError(f"input {s['name']!r}: dimension {i} ({d}) is {n} but input {first[1]!r} "
                                 f"has {d} = {first[0]}; inputs sharing {d} must agree")
    return {k: v[0] for k, v in sizes.items()}


def compare(outputs: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, Any]:
    """Max abs error and cosine of each output against its reference, and the worst over all."""
    if len(outputs) != len(reference):
        raise ArtifactError(f"{len(outputs)} outputs but {len(reference)} reference outputs")
    per = []
    for o, r in zip(outputs, reference):
        o, r = np.asarray(o), np.asarray(r)
        if o.shape != r.shape:
            per.append({"shape": list(o.shape), "reference_shape": list(r.shape), "max_abs_err": float("inf"),
                        "cosine": 0.0})
            continue
        per.append({"shape": list(o.shape), "max_abs_err": max_abs_error(o, r), "cosine": cosine(o, r)})
    return {
        "max_abs_err": max((p["max_abs_err"] for p in per), default=0.0),
        "min_cosine": min((p["cosine"] for p in per), default=1.0),
        "outputs": per,
    }


def is_compressed(manifest: dict) -> bool:
    """Whether the artifact was built with passes that change what it computes (int8, pruning):
    its outputs then differ from the stored framework reference by design."""
    comp = manifest.get("compression") or {}
    return bool(comp.get("passes")) or any(k != "passes" for k in comp)


def reproduces_build(check: dict[str, Any], reference: list[np.ndarray], tolerance: float,
                     fidelity: dict | None) -> bool:
    """Whether a device's outputs (``check``: :func:`compare` against the stored ``reference``, the
    framework's outputs) are as close to the framework as the build's were: max abs error within
    ``tolerance`` of the reference's scale (at least 1) beyond the build's own error, cosine no more
    than ``tolerance`` below the build's. A compressed artifact (int8, pruned) differs from the
    framework by design; its manifest's ``fidelity`` records by how much, and that is what a device
    must reproduce. Without a measured fidelity the build's error counts as 0."""
    built = fidelity if fidelity and "max_abs_err" in fidelity else {"max_abs_err": 0.0, "min_cosine": 1.0}
    scale = max([1.0] + [float(np.max(np.abs(r))) for r in reference if np.asarray(r).size])
    return bool(check["max_abs_err"] <= float(built["max_abs_err"]) + tolerance * scale
                and check["min_cosine"] >= float(built["min_cosine"]) - tolerance)


def archive_cap() -> int:
    """The cap on what an archive may extract to: ``HWCOMP_MAX_ARCHIVE_BYTES`` or the default."""
    text = os.environ.get("HWCOMP_MAX_ARCHIVE_BYTES")
    if text is None:
        return MAX_ARCHIVE_BYTES
    try:
        cap = int(text)
    except ValueError:
        cap = 0
    if cap <= 0:
        raise ArtifactError(f"HWCOMP_MAX_ARCHIVE_BYTES={text!r} is not a positive number of bytes")
    return cap


class Artifact:
    """A loaded, verified artifact. ``run`` executes it on this machine, from any number of threads."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self._weights = None
        self._tmp = None
        self._lock = threading.Lock()
        self._lib = None
        self._dev_weights = None
        # One VM per calling thread: a Relax VM keeps per-call state (registers, the storage it
        # allocates outputs from), and two threads in one VM crash it (StorageObj::AllocTensor).
        self._local = threading.local()

    # ---- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, verify: bool = True, expect_digest: str | None = None,
             max_archive_bytes: int | None = None) -> Artifact:
        """Open an artifact directory (or ``.tar.gz`` made by :meth:`pack`) and check it.

        The manifest's structure is validated and every file is used only if the manifest lists it;
        with ``verify`` (default) each listed file must match its sha256 and ``model.so`` must be a
        whole ELF library for the manifest's architecture. A sha256 proves the files are the ones the
        manifest names, not who made them: ``expect_digest`` (the :attr:`digest` of an artifact you
        trust, shown by ``hwcomp inspect``) pins the manifest itself, and so every file."""
        path = Path(path)
        tmp = None
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
            tmp = tempfile.TemporaryDirectory(prefix="hwcomp-")
            cap = max_archive_bytes or archive_cap()
            try:
                path = extract_archive(path, Path(tmp.name), cap)
            except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as e:
                tmp.cleanup()
                raise ArtifactError(f"{path}: not a readable artifact archive ({error_line(e)})") from None
            except ArtifactError:
                tmp.cleanup()
                raise
        if not path.is_dir():
            raise ArtifactError(f"{path}: no such artifact directory")
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise ArtifactError(f"{path}: not an hwcomp artifact (no {MANIFEST})")
        raw = mpath.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if expect_digest is not None and digest != expect_digest.strip().lower():
            raise ArtifactError(f"{path}: manifest digest {digest[:16]}… is not the trusted "
                                f"{expect_digest.strip()[:16]}…; refusing to load")
        try:
            manifest = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise ArtifactError(f"{mpath}: corrupt manifest ({error_line(e)})") from None
        validate_manifest(manifest, path)
        files = manifest["files"]
        for name in KNOWN_FILES:
            if name not in files and (path / name).exists():
                raise ArtifactError(f"{path}: {name} is present but not listed in the manifest; "
                                    "refusing an unverified file")
        for name, want in files.items():
            f = path / name
            if f.is_symlink() or not f.is_file():
                raise ArtifactError(f"{path}: {name} is missing or not a regular file")
            if verify and sha256(f) != want:
                raise ArtifactError(f"{path}: {name} does not match its sha256 in the manifest "
                                    "(truncated or edited); rebuild the artifact")
        if verify:
            _check_library(path / LIB, manifest["target"])
        art = cls(path, manifest)
        art._tmp = tmp
        return art

    @property
    def digest(self) -> str:
        """sha256 of ``manifest.json``: it lists every file's sha256, so it names the whole artifact."""
        return hashlib.sha256((self.path / MANIFEST).read_bytes()).hexdigest()

    # ---- description ---------------------------------------------------------------------------
    @property
    def target(self) -> dict[str, Any]:
        return self.manifest["target"]

    @property
    def inputs(self) -> list[dict]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.manifest["outputs"]

    @property
    def dynamic(self) -> dict[str, dict]:
        """Symbolic dimensions: symbol → ``{"min": int, "max": int or None}`` (empty when static)."""
        return self.manifest.get("dynamic", {})

    @property
    def fidelity(self) -> dict[str, Any] | None:
        return self.manifest.get("fidelity")

    def runs_here(self) -> tuple[bool, str]:
        arch = self.target["arch"]
        if arch != platform.machine():
            return False, f"artifact is built for {arch}, this machine is {platform.machine()}"
        if self.target["tvm"]["kind"] == "cuda":
            import tvm

            from .cuda import load_cuda_runtime

            load_cuda_runtime()  # a runtime-only process does not load libtvm_runtime_cuda by itself
            if not tvm.cuda(0).exist:
                return False, "artifact is built for CUDA and no CUDA GPU is present"
        return True, ""

    def reference(self) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """The stored example inputs and the framework's outputs on them, if the manifest lists them."""
        if REFERENCE not in self.manifest["files"]:
            return None
        try:
            with np.load(self.path / REFERENCE, allow_pickle=False) as z:
                ins = [z[f"input{i}"] for i in range(len(self.inputs))]
                n_out = sum(1 for k in z.files if k.startswith("output"))
                outs = [z[f"output{i}"] for i in range(n_out)]
        except Exception as e:  # noqa: BLE001 - any failure to parse the bytes means a bad file
            raise ArtifactError(f"{self.path}: {REFERENCE} is not a valid reference ({error_line(e)})") from None
        return ins, outs

    def weights(self) -> list[np.ndarray]:
        with self._lock:
            if self._weights is None:
                try:
                    with np.load(self.path / WEIGHTS, allow_pickle=False) as z:
                        self._weights = [z[k] for k in z.files]
                except Exception as e:  # noqa: BLE001 - any failure to parse the bytes means a bad file
                    raise ArtifactError(f"{self.path}: {WEIGHTS} is not readable ({error_line(e)})") from None
            return self._weights

    # ---- running -------------------------------------------------------------------------------
    def sample_inputs(self) -> list[np.ndarray]:
        """Inputs to run on: the stored example inputs (checked), else random ones of the right specs."""
        ref = self.reference()
        if ref is not None:
            return self.check_inputs(ref[0])
        from .frontend.model import TensorSpec, random_inputs

        return random_inputs([TensorSpec.from_dict(s) for s in self.inputs],
                             dynamic={k: (r["min"], r["max"]) for k, r in self.dynamic.items()})

    def check_inputs(self, inputs) -> list[np.ndarray]:
        """Order inputs (a list, or a dict by name) and check names, shapes and dtypes."""
        specs = self.inputs
        if isinstance(inputs, dict):
            missing = [s["name"] for s in specs if s["name"] not in inputs]
            extra = [k for k in inputs if k not in {s["name"] for s in specs}]
            if missing or extra:
                raise InputError(f"inputs do not match the model: missing {missing}, unexpected {extra}; "
                                 f"expected {[s['name'] for s in specs]}")
            inputs = [inputs[s["name"]] for s in specs]
        inputs = list(inputs)
        if len(inputs) != len(specs):
            raise InputError(f"model takes {len(specs)} inputs ({[s['name'] for s in specs]}), got {len(inputs)}")
        out = []
        inputs = [np.asarray(a) for a in inputs]
        check_shapes(specs, self.dynamic, inputs)
        for s, a in zip(specs, inputs):
            if str(a.dtype) != s["dtype"]:
                raise InputError(f"input {s['name']!r}: dtype {a.dtype} but the model expects {s['dtype']}")
            out.append(np.ascontiguousarray(a))
        return out

    def device(self):
        import tvm

        return tvm.cuda(0) if self.target["tvm"]["kind"] == "cuda" else tvm.cpu(0)

    def load_library(self):
        """``model.so`` as a TVM module (see :func:`load_shared_library`)."""
        return load_shared_library(self.path / LIB, self.manifest["files"][LIB])

    def vm(self):
        """This thread's Relax VM on this machine (the library and weights are loaded once)."""
        vm = getattr(self._local, "vm", None)
        if vm is None:
            from tvm.runtime.vm import VirtualMachine

            with self._lock:
                if self._lib is None:
                    ok, why = self.runs_here()
                    if not ok:
                        raise ArtifactError(f"{self.path}: cannot run here: {why} (use `hwcomp bench --device ...`)")
                    self._lib = self.load_library()
                lib = self._lib
            vm = self._local.vm = VirtualMachine(lib, self.device())
        if self._dev_weights is None:
            import tvm

            weights = self.weights()
            with self._lock:
                if self._dev_weights is None:
                    self._dev_weights = [tvm.runtime.tensor(w, self.device()) for w in weights]
        return vm

    def device_args(self, inputs) -> list:
        """Inputs (checked) and weights as device tensors, in the order ``main`` takes them."""
        import tvm

        self.vm()
        dev = self.device()
        return [tvm.runtime.tensor(a, dev) for a in self.check_inputs(inputs)] + self._dev_weights

    def run(self, inputs) -> list[np.ndarray]:
        """Run the model on NumPy inputs (list in input order, or dict by name); returns outputs."""
        return flatten_outputs(self.vm()["main"](*self.device_args(inputs)))

    def pack(self, archive: str | Path) -> Path:
        """Write the artifact (the manifest and the files it lists) as one ``.tar.gz``."""
        archive = Path(archive)
        if not archive.parent.is_dir():
            raise ArtifactError(f"cannot write {archive}: folder {archive.parent} does not exist")
        tmp = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
        try:
            with tarfile.open(tmp, "w:gz") as tf:
                for name in (MANIFEST, *self.manifest["files"]):
                    tf.add(self.path / name, arcname=f"{self.path.name}/{name}")
            os.replace(tmp, archive)
        finally:
            tmp.unlink(missing_ok=True)
        return archive


def _check_library(lib: Path, target: dict[str, Any]) -> None:
    """``model.so`` must be a whole ELF library built for the manifest's architecture."""
    from .runtime.elf import ElfError, elf_arch, normalize_arch

    try:
        arch = elf_arch(lib)
    except (ElfError, OSError) as e:
        raise ArtifactError(f"{lib.parent}: {e}") from None
    if arch != normalize_arch(target["arch"]):
        raise ArtifactError(f"{lib.parent}: {LIB} is built for {arch} but the manifest says "
                            f"{target['arch']}; refusing an inconsistent artifact")


def flatten_outputs(result) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out = []
    for r in result:
        out.extend(flatten_outputs(r))
    return out
