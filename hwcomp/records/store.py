"""Reading and writing the files of a database directory: one atomic writer (write-then-rename), one
appender, one advisory file lock, the directory's target file, and :class:`MeasurementStore`, the
keyed store of latencies measured on a target (the BSR pass's choices, the policy search's layer
latencies, and any later kernel measurement).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from ..errors import HwcompWarning
from ..target import Target
from .locations import (
    BSR_CHOICES,
    DATA_FILES,
    META,
    POLICY_LATENCY,
    SERVED,
    cache_root,
    target_signature,
    tvm_dict,
)


class TuningDatabaseWarning(HwcompWarning):
    """A line of a tuning database was skipped (corrupt, dangling or for another target)."""


# ----------------------------------------------------------------------------- files


def path_key(path: str | Path) -> str:
    """A short name for a file or directory, for what hwcomp keeps about it in its cache."""
    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:16]


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that no reader ever sees half a file (write, fsync, rename);
    an existing file's permissions are kept, a new one gets the umask's."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def lines_text(lines: list[str]) -> str:
    return "".join(ln + "\n" for ln in lines)


def append_lines(path: Path, lines: list[str]) -> None:
    """Append whole lines to a JSON-lines file (flushed to disk), holding the file's lock."""
    if lines:
        with locked(path):
            _append(Path(path), lines)


def _append(path: Path, lines: list[str]) -> None:
    # After a torn last line (a writer killed mid-line) start on a new line: the torn one stays a
    # bad line on its own instead of swallowing the first new entry.
    torn = False
    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a") as f:
        f.write(("\n" if torn else "") + lines_text(lines))
        f.flush()
        os.fsync(f.fileno())


def append_json_line(path: Path, obj: Any) -> None:
    append_lines(Path(path), [json.dumps(obj, separators=(",", ":"))])


def read_lines(path: Path) -> tuple[list[str], bool]:
    """Lines of a text file (without newlines) and whether it ended with a newline."""
    if not path.is_file():
        return [], True
    data = path.read_bytes()
    if not data:
        return [], True
    text = data.decode("utf-8", errors="replace")
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), (not data or data.endswith(b"\n"))


def backup_name(path: Path) -> Path:
    bak = path.with_name(path.name + ".bak")
    n = 1
    while bak.exists():
        bak = path.with_name(f"{path.name}.bak{n}")
        n += 1
    return bak


def writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK) and all(
        os.access(directory / n, os.W_OK) for n in DATA_FILES if (directory / n).exists())


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive advisory lock on a database directory or one of its files (not reentrant: a
    directory and each of its files have separate locks). The lock file sits in the cache, which
    keeps database directories clean; without a usable cache it is a no-op."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        lock = cache_root() / "db-checked" / f"{path_key(path)}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def json_object(text: str) -> dict:
    """``text`` parsed as one JSON object; ValueError for anything else (torn, edited, a list)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


# ----------------------------------------------------------------------------- the directory's target


def read_meta(directory: str | Path) -> dict | None:
    p = Path(directory) / META
    try:
        meta = json.loads(p.read_text())
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def write_meta(directory: str | Path, target: Target) -> None:
    """Record which target a database directory is for (once; an existing file is kept)."""
    p = Path(directory) / META
    if p.exists():
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": 1, "target": target.name, "signature": target_signature(target), "tvm": tvm_dict(target)}
    atomic_write(p, json.dumps(meta, indent=2) + "\n")


UNKNOWN_CPU = "unknown"  # records whose CPU nobody wrote down (shipped before hwcomp kept it, hand-made)


def note_cpus(directory: str | Path, cpus: list[str]) -> None:
    """Add ``cpus`` to the CPUs whose measurements ``directory`` holds (``hwcomp_db.json``'s ``cpus``).

    The tuner notes the CPU it measured on; importing or seeding records notes the source's CPUs (or
    :data:`UNKNOWN_CPU`). Compile re-times records here unless this CPU is the only one noted."""
    p = Path(directory) / META
    with locked(p):
        meta = read_meta(directory)
        if meta is None:
            return
        have = [str(c) for c in meta.get("cpus", [])]
        new = [c for c in dict.fromkeys(cpus) if c not in have]
        if new:
            atomic_write(p, json.dumps({**meta, "cpus": have + new}, indent=2) + "\n")


def tuned_on(directory: str | Path) -> list[str]:
    """The CPUs whose measurements ``directory`` holds; ``[UNKNOWN_CPU]`` when it does not say."""
    meta = read_meta(directory) or {}
    cpus = meta.get("cpus")
    return [str(c) for c in cpus] if isinstance(cpus, list) and cpus else [UNKNOWN_CPU]


def database_signature(directory: str | Path) -> str | None:
    meta = read_meta(directory)
    return str(meta["signature"]) if meta and "signature" in meta else None


# ----------------------------------------------------------------------------- keyed measurements

_LABELS = {BSR_CHOICES: "BSR choices", POLICY_LATENCY: "policy latency", SERVED: "served-schedule verdicts"}


class MeasurementStore:
    """``key → entry`` latencies measured on one target, in one file of its database directory.

    Two layouts, by file: ``hwcomp_bsr.json`` is one JSON object (rewritten whole, atomically); the
    others are JSON lines, each an object with its ``key`` (appended; a later line of a key wins).
    Every change is made under the file's lock, so concurrent compiles and tuners lose no entry.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"MeasurementStore({str(self.path)!r})"

    @property
    def one_object(self) -> bool:
        return self.path.name == BSR_CHOICES

    @property
    def label(self) -> str:
        return _LABELS.get(self.path.name, "measurement")

    def read(self) -> tuple[dict[str, Any], int]:
        """The entries and how many lines were damaged (left out). Raises ValueError when a
        one-object file is damaged."""
        if not self.path.is_file():
            return {}, 0
        text = self.path.read_text()
        if self.one_object:
            return json_object(text), 0
        out, bad = {}, 0
        for line in text.splitlines():
            try:
                obj = json.loads(line)
                out[str(obj["key"])] = obj
            except (ValueError, KeyError, TypeError):
                bad += bool(line.strip())
        return out, bad

    def load(self) -> dict[str, Any]:
        """The entries. A damaged one-object file is moved aside (``<file>.corrupt``, kept for
        inspection) with a warning: its entries get measured again rather than trusted or overwritten."""
        try:
            return self.read()[0]
        except OSError:
            return {}
        except ValueError as e:
            aside = self.path.with_name(self.path.name + ".corrupt")
            os.replace(self.path, aside)
            warnings.warn(f"{self.path}: corrupt {self.label} file ({e}); moved to {aside}, re-measuring",
                          stacklevel=3)
            return {}

    def get(self, key: str) -> Any:
        return self.load().get(key)

    def put(self, key: str, entry: Any) -> None:
        """Store ``entry`` under ``key`` (a JSON-lines entry gets its ``key`` field)."""
        self.add({key: entry}, replace=True)

    def add(self, entries: dict[str, Any], replace: bool = False) -> int:
        """Store the ``entries`` (without ``replace``: only those whose key is missing); returns how
        many were written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with locked(self.path):
            have = self.load() if self.one_object or not replace else {}
            new = entries if replace else {k: v for k, v in entries.items() if k not in have}
            if not new:
                return 0
            if self.one_object:
                atomic_write(self.path, json.dumps({**have, **new}, indent=1, sort_keys=True) + "\n")
            else:
                _append(self.path, [json.dumps({"key": k, **{f: x for f, x in v.items() if f != "key"}},
                                               separators=(",", ":")) for k, v in new.items()])
        return len(new)
