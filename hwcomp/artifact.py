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
import re
import shutil
import tarfile
import tempfile
import threading
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .errors import ArtifactError, InputError
from .metrics import cosine, max_abs_error  # NumPy only; cosine re-exported

FORMAT = "hwcomp-artifact/1"
LIB, WEIGHTS, REFERENCE, MANIFEST = "model.so", "weights.npz", "reference.npz", "manifest.json"
#: Files an artifact may hold; a manifest naming anything else is refused.
KNOWN_FILES = (LIB, WEIGHTS, REFERENCE)
#: Extra members of a deploy bundle (``hwcomp deploy --bundle``): never extracted by ``load``.
BUNDLE_EXTRAS = ("run_model.py", "README.txt")
#: Default cap on the bytes an archive may extract to (``HWCOMP_MAX_ARCHIVE_BYTES`` overrides it).
MAX_ARCHIVE_BYTES = 16 << 30
_MAX_MANIFEST_BYTES = 4 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: an output dimension that depends on the inputs' symbols: an arithmetic expression of them
_SHAPE_EXPR = re.compile(r"^[A-Za-z0-9_ +\-*/%(),.]{1,200}$")
_DTYPES = {"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64",
           "uint8", "uint16", "uint32", "uint64", "bool"}


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
    """Hash every artifact file beside the manifest into it and write it (atomically)."""
    manifest = dict(manifest)
    manifest["format"] = FORMAT
    present = [directory / n for n in KNOWN_FILES if (directory / n).is_file()]
    manifest["files"] = {p.name: sha256(p) for p in present}
    manifest["sizes"] = {p.name: p.stat().st_size for p in present}
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, directory / MANIFEST)
    return manifest


# ---- the manifest's schema ------------------------------------------------------------------------


def _dynamic_errors(dynamic: Any) -> str | None:
    """``dynamic``: symbol name → ``{"min": int, "max": int or null}`` (null: unbounded)."""
    if not isinstance(dynamic, dict):
        return "'dynamic' must be an object of symbol → {min, max}"
    for name, r in dynamic.items():
        if not isinstance(name, str) or not _SYMBOL.match(name):
            return f"'dynamic' symbol {name!r} is not a name"
        if not isinstance(r, dict) or set(r) != {"min", "max"}:
            return f"'dynamic'[{name!r}] must be an object with 'min' and 'max'"
        lo, hi = r["min"], r["max"]
        if type(lo) is not int or not 0 <= lo < 1 << 40 or \
                (hi is not None and (type(hi) is not int or not lo <= hi < 1 << 40)):
            return f"'dynamic'[{name!r}] needs integers 0 <= min <= max (max may be null: unbounded)"
    return None


def _spec_errors(specs: Any, what: str, symbols: dict | None = None) -> str | None:
    """``symbols``: the symbols an input dimension may name (outputs may name any expression)."""
    if not isinstance(specs, list) or not specs:
        return f"{what} must be a non-empty list"
    names = set()
    for i, s in enumerate(specs):
        if not isinstance(s, dict):
            return f"{what}[{i}] must be an object"
        name, shape, dtype = s.get("name"), s.get("shape"), s.get("dtype")
        if not isinstance(name, str) or not name or name in names:
            return f"{what}[{i}].name must be a unique non-empty string"
        names.add(name)
        if not isinstance(shape, list) or not all(
                (type(d) is int and 0 <= d < 1 << 40)
                or (isinstance(d, str) and (d in symbols if symbols is not None else _SHAPE_EXPR.match(d)))
                for d in shape):
            return (f"{what}[{i}].shape must be a list of non-negative integers"
                    + (" or symbols of 'dynamic'" if symbols is not None else " or symbolic dimensions"))
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            return f"{what}[{i}].dtype {dtype!r} is not one of {sorted(_DTYPES)}"
    return None


def validate_manifest(manifest: Any, where: str | Path) -> dict[str, Any]:
    """Check the manifest's structure; raise :class:`ArtifactError` with one line naming the field.

    File names must be the artifact's own (``model.so``, ``weights.npz``, ``reference.npz``): no
    path, so nothing outside the artifact can be named, read or hashed."""
    def bad(why: str):
        raise ArtifactError(f"{where}: invalid manifest: {why}")

    if not isinstance(manifest, dict):
        bad("not a JSON object")
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{where}: not an hwcomp artifact of format {FORMAT!r} "
                            f"(found {manifest.get('format')!r})")
    files = manifest.get("files")
    if not isinstance(files, dict):
        bad("'files' must be an object of file name → sha256")
    for name, digest in files.items():
        if name not in KNOWN_FILES:
            bad(f"'files' names {name!r}; an artifact holds only {', '.join(KNOWN_FILES)}")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            bad(f"'files'[{name!r}] is not a sha256 hex digest")
    for name in (LIB, WEIGHTS):
        if name not in files:
            bad(f"'files' lists no {name}")
    sizes = manifest.get("sizes")
    if sizes is not None and (not isinstance(sizes, dict) or set(sizes) != set(files)
                              or not all(type(v) is int and v >= 0 for v in sizes.values())):
        bad("'sizes' must give a non-negative byte count for every listed file")
    target = manifest.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("name"), str) \
            or not isinstance(target.get("arch"), str) or not isinstance(target.get("tvm"), dict) \
            or not isinstance(target["tvm"].get("kind"), str):
        bad("'target' must be an object with string 'name', 'arch' and a 'tvm' object with a 'kind'")
    dynamic = manifest.get("dynamic", {})
    why = _dynamic_errors(dynamic) or _spec_errors(manifest.get("inputs"), "'inputs'", dynamic) \
        or _spec_errors(manifest.get("outputs"), "'outputs'")
    if why:
        bad(why)
    return manifest


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


def replaceable_reason(directory: Path) -> str | None:
    """Why ``directory`` must not be replaced by a new artifact, or None when it may be: it does not
    exist, is empty, or holds an hwcomp artifact and nothing else."""
    if not directory.exists() and not directory.is_symlink():
        return None
    if directory.is_symlink() or not directory.is_dir():
        return f"{directory} exists and is not a directory"
    entries = sorted(p.name for p in directory.iterdir())
    if not entries:
        return None
    if MANIFEST not in entries:
        return f"{directory} is not empty and not an hwcomp artifact (it holds {entries[0]!r})"
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        validate_manifest(manifest, directory)
    except (ArtifactError, OSError, ValueError):
        return f"{directory} holds a {MANIFEST} that is not an hwcomp artifact's"
    own = {MANIFEST, *manifest["files"]}
    foreign = [n for n in entries if n not in own]
    if foreign:
        return f"{directory} holds {foreign[0]!r}, which is not part of the artifact there"
    return None


def check_replaceable(directory: Path, force: bool = False) -> None:
    """Refuse an output directory whose contents a new artifact would destroy.

    ``force`` replaces any directory except the filesystem root, the home directory and the working
    directory or one of its parents."""
    why = replaceable_reason(directory)
    if why is None:
        return
    resolved = directory.resolve()
    protected = {Path("/"), Path.home().resolve(), *Path.cwd().resolve().parents, Path.cwd().resolve()}
    if force and resolved.is_dir() and resolved not in protected:
        return
    if force:
        raise ArtifactError(f"refusing to replace {directory} even with --force: "
                            + ("it is not a directory" if not resolved.is_dir()
                               else "it is the root, home or working directory or a parent of it"))
    raise ArtifactError(f"refusing to replace {why}; choose another output or pass --force")


def replace_dir(new: Path, final: Path) -> Path:
    """Move the finished directory ``new`` to ``final``; what was at ``final`` is removed only
    after the new one is in place (an interrupt between the two renames leaves it beside, named
    ``.NAME.hwcomp-old-*``)."""
    old = None
    if final.exists() or final.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.hwcomp-old-", dir=final.parent))
        os.rmdir(old)
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    return final


def _extract_archive(archive: Path, dest: Path, max_bytes: int) -> Path:
    """Extract the artifact in ``archive`` into ``dest``: only the manifest and the files it lists,
    regular files only, at most ``max_bytes`` in all; returns the artifact directory."""
    def bad(why: str):
        raise ArtifactError(f"{archive}: refused: {why}")

    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        manifests = [m for m in members if PurePosixPath(m.name).name == MANIFEST]
        if len(manifests) != 1:
            bad(f"expected one {MANIFEST}, found {len(manifests)}")
        mm = manifests[0]
        top = PurePosixPath(mm.name).parent
        if len(top.parts) > 1 or ".." in top.parts or top.is_absolute():
            bad(f"{MANIFEST} is nested at {mm.name!r}")
        if not mm.isreg() or mm.size > _MAX_MANIFEST_BYTES:
            bad(f"{MANIFEST} is not a regular file of at most {_MAX_MANIFEST_BYTES} bytes")
        raw = tf.extractfile(mm).read()
        try:
            manifest = json.loads(raw)
        except ValueError as e:
            bad(f"corrupt {MANIFEST} ({_first_line(e)})")
        validate_manifest(manifest, archive)
        wanted = {str(top / n) if str(top) != "." else n: n for n in manifest["files"]}
        take, total = [], len(raw)
        for m in members:
            if m is mm or (m.isdir() and PurePosixPath(m.name) == top):
                continue
            name = wanted.get(m.name)
            if name is None:
                if PurePosixPath(m.name).name in BUNDLE_EXTRAS and PurePosixPath(m.name).parent == top:
                    continue  # a deploy bundle's runner and README: not part of the artifact
                bad(f"member {m.name!r} is not listed in the manifest")
            if not m.isreg():
                bad(f"member {m.name!r} is not a regular file")
            sizes = manifest.get("sizes")
            if sizes is not None and m.size != sizes[name]:
                bad(f"member {m.name!r} is {m.size} bytes, the manifest says {sizes[name]}")
            total += m.size
            if total > max_bytes:
                bad(f"it would extract more than {max_bytes} bytes (HWCOMP_MAX_ARCHIVE_BYTES)")
            take.append((m, name))
        out = dest / (top.name or "artifact")
        out.mkdir()
        (out / MANIFEST).write_bytes(raw)
        for m, name in take:
            with tf.extractfile(m) as src, open(out / name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return out


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
            cap = max_archive_bytes or int(os.environ.get("HWCOMP_MAX_ARCHIVE_BYTES", MAX_ARCHIVE_BYTES))
            try:
                path = _extract_archive(path, Path(tmp.name), cap)
            except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as e:
                tmp.cleanup()
                raise ArtifactError(f"{path}: not a readable artifact archive ({_first_line(e)})") from None
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
            raise ArtifactError(f"{mpath}: corrupt manifest ({_first_line(e)})") from None
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
            raise ArtifactError(f"{self.path}: {REFERENCE} is not a valid reference ({_first_line(e)})") from None
        return ins, outs

    def weights(self) -> list[np.ndarray]:
        with self._lock:
            if self._weights is None:
                try:
                    with np.load(self.path / WEIGHTS, allow_pickle=False) as z:
                        self._weights = [z[k] for k in z.files]
                except Exception as e:  # noqa: BLE001 - any failure to parse the bytes means a bad file
                    raise ArtifactError(f"{self.path}: {WEIGHTS} is not readable ({_first_line(e)})") from None
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].rstrip(":") if text else type(e).__name__


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
