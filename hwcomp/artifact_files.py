"""The artifact's files on disk: the manifest's schema, archives, and replacing an output folder.

Runtime-only like :mod:`hwcomp.artifact` (NumPy and the standard library): a board can check a
manifest and unpack an artifact archive without the compiler.

- :func:`validate_manifest`: every manifest field checked, one line naming a bad one.
- :func:`write_manifest`: hash every artifact file into the manifest, written atomically.
- :func:`extract_archive`: unpack only the manifest and the files it lists, within a byte cap.
- :func:`check_replaceable` / :func:`replace_dir`: never destroy a folder that is not an artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .errors import ArtifactError, error_line


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
    fidelity = manifest.get("fidelity")
    if fidelity is not None and (not isinstance(fidelity, dict) or "max_abs_err" in fidelity and not all(
            isinstance(fidelity.get(k), (int, float)) and not isinstance(fidelity.get(k), bool)
            for k in ("max_abs_err", "min_cosine"))):
        bad("'fidelity' must be an object; measured, with numbers 'max_abs_err' and 'min_cosine'")
    if manifest.get("compression") is not None and not isinstance(manifest["compression"], dict):
        bad("'compression' must be an object")
    dynamic = manifest.get("dynamic", {})
    why = _dynamic_errors(dynamic) or _spec_errors(manifest.get("inputs"), "'inputs'", dynamic) \
        or _spec_errors(manifest.get("outputs"), "'outputs'")
    if why:
        bad(why)
    return manifest


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


def extract_archive(archive: Path, dest: Path, max_bytes: int) -> Path:
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
            bad(f"corrupt {MANIFEST} ({error_line(e)})")
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
