"""The compiled artifact: a directory with the library, the weights and ``manifest.json``.

This module is the runtime side: it imports only ``tvm.runtime`` (it works in a process started with
``TVM_USE_RUNTIME_LIB=1``, i.e. without the 259 MB compiler library), so a board can load artifacts.

Layout::

    model.so        compiled kernels + Relax VM bytecode (no weights)
    weights.npz     weights, in the order main() takes them after the inputs
    reference.npz   example inputs and the framework's outputs on them (for correctness checks)
    manifest.json   format, versions, target, I/O specs, sha256 of every file, compression, fidelity
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, InputError

FORMAT = "hwcomp-artifact/1"
LIB, WEIGHTS, REFERENCE, MANIFEST = "model.so", "weights.npz", "reference.npz", "manifest.json"


#: The path and the (device, inode) of every shared library this process has loaded → its sha256.
#: The dynamic loader keeps a library for the life of the process and hands it back for any later
#: dlopen of the same path or the same file identity — even after the file was deleted and a new one
#: took its path or its inode number (an artifact rebuilt in place): the old code would then run
#: with the new weights.
_LOADED: dict[object, str] = {}


def load_shared_library(path: Path, digest: str):
    """``tvm.runtime.load_module(path)``, through a copy named by ``digest`` when this process already
    loaded a different library from that path or with the file identity ``path`` has now."""
    import shutil

    import tvm

    def keys(p: Path) -> tuple:
        st = p.stat()
        return str(p.resolve()), (st.st_dev, st.st_ino)

    if any(_LOADED.get(k, digest) != digest for k in keys(path)):
        from .tune.database import cache_root

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


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # Names are kept in order: npz preserves insertion order.
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file beside the manifest into it and write it."""
    manifest = dict(manifest)
    manifest["format"] = FORMAT
    manifest["files"] = {p.name: sha256(p) for p in sorted(directory.iterdir())
                         if p.is_file() and p.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


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
        err = float(np.max(np.abs(o.astype(np.float64) - r.astype(np.float64)))) if o.size else 0.0
        per.append({"shape": list(o.shape), "max_abs_err": err, "cosine": cosine(o, r)})
    return {
        "max_abs_err": max((p["max_abs_err"] for p in per), default=0.0),
        "min_cosine": min((p["cosine"] for p in per), default=1.0),
        "outputs": per,
    }


class Artifact:
    """A loaded, verified artifact. ``run`` executes it on this machine."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self._vm = None
        self._weights = None
        self._tmp = None

    # ---- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> Artifact:
        """Open an artifact directory (or ``.tar.gz`` made by :meth:`pack`) and check its hashes."""
        path = Path(path)
        tmp = None
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
            tmp = tempfile.TemporaryDirectory(prefix="hwcomp-")
            try:
                with tarfile.open(path) as tf:
                    tf.extractall(tmp.name, filter="data")
            except (tarfile.TarError, EOFError, OSError) as e:
                raise ArtifactError(f"{path}: not a readable artifact archive ({e})") from e
            inner = [p for p in Path(tmp.name).iterdir() if p.is_dir()]
            path = inner[0] if len(inner) == 1 and not (Path(tmp.name) / MANIFEST).exists() else Path(tmp.name)
        if not path.is_dir():
            raise ArtifactError(f"{path}: no such artifact directory")
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise ArtifactError(f"{path}: not an hwcomp artifact (no {MANIFEST})")
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{mpath}: corrupt manifest ({e})") from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ArtifactError(
                f"{path}: not an hwcomp artifact of format {FORMAT!r} (found {manifest.get('format')!r})"
                if isinstance(manifest, dict) else f"{mpath}: corrupt manifest")
        if verify:
            files = manifest.get("files", {})
            for name in (LIB, WEIGHTS):
                if name not in files:
                    raise ArtifactError(f"{path}: manifest lists no {name}")
            for name, digest in files.items():
                f = path / name
                if not f.is_file():
                    raise ArtifactError(f"{path}: {name} is missing")
                if sha256(f) != digest:
                    raise ArtifactError(f"{path}: {name} does not match its sha256 in the manifest "
                                        "(truncated or edited); rebuild the artifact")
        art = cls(path, manifest)
        art._tmp = tmp
        return art

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
        """The stored example inputs and the framework's outputs on them, if present."""
        f = self.path / REFERENCE
        if not f.is_file():
            return None
        with np.load(f) as z:
            ins = [z[f"input{i}"] for i in range(len(self.inputs))]
            n_out = sum(1 for k in z.files if k.startswith("output"))
            outs = [z[f"output{i}"] for i in range(n_out)]
        return ins, outs

    def weights(self) -> list[np.ndarray]:
        if self._weights is None:
            with np.load(self.path / WEIGHTS) as z:
                self._weights = [z[k] for k in z.files]
        return self._weights

    # ---- running -------------------------------------------------------------------------------
    def sample_inputs(self) -> list[np.ndarray]:
        """Inputs to run on: the stored example inputs (checked), else random ones of the right specs."""
        ref = self.reference()
        if ref is not None:
            return self.check_inputs(ref[0])
        from .frontend.model import TensorSpec, random_inputs

        return random_inputs([TensorSpec.from_dict(s) for s in self.inputs])

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
        for s, a in zip(specs, inputs):
            a = np.asarray(a)
            if tuple(a.shape) != tuple(s["shape"]):
                raise InputError(f"input {s['name']!r}: shape {tuple(a.shape)} but the model was compiled "
                                 f"for {tuple(s['shape'])}")
            if str(a.dtype) != s["dtype"]:
                raise InputError(f"input {s['name']!r}: dtype {a.dtype} but the model expects {s['dtype']}")
            out.append(np.ascontiguousarray(a))
        return out

    def device(self):
        import tvm

        return tvm.cuda(0) if self.target["tvm"]["kind"] == "cuda" else tvm.cpu(0)

    def load_library(self):
        """``model.so`` as a TVM module (see :func:`load_shared_library`)."""
        return load_shared_library(self.path / LIB, self.manifest.get("files", {}).get(LIB) or sha256(self.path / LIB))

    def vm(self):
        """The Relax VM on this machine (loaded once)."""
        if self._vm is None:
            ok, why = self.runs_here()
            if not ok:
                raise ArtifactError(f"{self.path}: cannot run here: {why} (use `hwcomp bench --device ...`)")
            import tvm
            from tvm.runtime.vm import VirtualMachine

            lib = self.load_library()
            dev = self.device()
            self._vm = VirtualMachine(lib, dev)
            self._dev_weights = [tvm.runtime.tensor(w, dev) for w in self.weights()]
        return self._vm

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
        """Write the artifact as one ``.tar.gz``."""
        archive = Path(archive)
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(self.path, arcname=self.path.name)
        return archive


def flatten_outputs(result) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out = []
    for r in result:
        out.extend(flatten_outputs(r))
    return out
