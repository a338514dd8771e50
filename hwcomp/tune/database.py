"""Tuning databases: MetaSchedule JSON databases, one directory per target.

A database directory holds

* ``database_workload.json``: one workload (a PrimFunc, structural hash + base64 IR) per line;
* ``database_tuning_record.json``: one measured schedule per line, ``[workload line index,
  [trace, run_secs, target, args_info]]``, appended by MetaSchedule as each batch is measured;
* ``hwcomp_knobs.json``: hwcomp's own kernels' knob measurements, one JSON object per line
  (see :mod:`hwcomp.tune.knobs`);
* ``hwcomp_db.json``: which target the directory is for.

MetaSchedule's ``JSONDatabase`` aborts the whole load on one bad line (a truncated line from a
killed tuner, a record whose workload index is out of range, a trace that does not apply), and
its lookup ignores the target a record was measured on. So every open goes through
:func:`validate_database` first: bad and foreign lines are reported (a warning naming file and line)
and dropped from a rewritten copy, the original kept as ``*.bak``. Validation is incremental: the
part of each file that was already checked is remembered (by size and hash) and not re-parsed by TVM.

Compile applies the user's database for the target when it has records, else the records shipped in
``schedules/<target>/records/``, else shipped records of another target with the same
:func:`target_signature` (``host`` on an AVX2 machine uses ``x86-avx2``'s).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import platform
import shutil
import tarfile
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..target import Target

WORKLOADS, RECORDS = "database_workload.json", "database_tuning_record.json"
KNOBS, META = "hwcomp_knobs.json", "hwcomp_db.json"
DATA_FILES = (WORKLOADS, RECORDS, KNOBS)
# Latencies measured on the target that are not MetaSchedule records, kept beside them: the BSR
# pass's dense-vs-sparse choices (one JSON object) and the policy search's per-layer option
# latencies (JSON lines). Export, import and merge carry them; the destination's entry wins.
BSR_CHOICES, POLICY_LATENCY = "hwcomp_bsr.json", "policy_latency.json"
MEASUREMENT_FILES = (BSR_CHOICES, POLICY_LATENCY)
FAILED_SECS = 1e9  # MetaSchedule stores 1e10 s for candidates that failed to build or run


class TuningDatabaseWarning(UserWarning):
    """A line of a tuning database was skipped (corrupt, dangling or for another target)."""


# ----------------------------------------------------------------------------- locations


def cache_root() -> Path:
    """hwcomp's cache directory: ``$HWCOMP_CACHE``, else ``~/.cache/hwcomp``."""
    return Path(os.environ.get("HWCOMP_CACHE", Path.home() / ".cache" / "hwcomp"))


def user_database_dir(target: Target) -> Path:
    return cache_root() / "tuning" / target.name


def shipped_database_dir(target: Target) -> Path | None:
    from importlib import resources

    d = resources.files("hwcomp.schedules") / target.name.replace("-", "_") / "records"
    return Path(str(d)) if d.is_dir() else None


def has_records(directory: str | Path | None) -> bool:
    return directory is not None and (Path(directory) / RECORDS).is_file() and (Path(directory) / RECORDS).stat().st_size > 0


def compatible_shipped_dir(target: Target) -> Path | None:
    """Shipped records of ``target`` itself, else of a shipped target with the same signature."""
    own = shipped_database_dir(target)
    if has_records(own):
        return own
    from ..target import get_target, target_names

    want = target_signature(target)
    for name in target_names():
        if name in ("host", target.name):
            continue
        try:
            other = get_target(name)
        except Exception:  # noqa: BLE001 - a broken description is not this function's business
            continue
        d = shipped_database_dir(other)
        if has_records(d) and target_signature(other) == want:
            return d
    return None


def default_database_dir(target: Target) -> Path | None:
    """The database compile uses when none is named: the user's, else the shipped one.

    "Shipped" includes records tuned for another shipped target with the same
    :func:`target_signature` (e.g. ``host`` on an AVX2+FMA x86 machine → ``x86-avx2``): MetaSchedule
    looks records up by workload only, and hwcomp only offers it records of a compatible target.
    """
    user = user_database_dir(target)
    if has_records(user):
        return user
    return compatible_shipped_dir(target)


# ----------------------------------------------------------------------------- target signatures


def _plain(obj: Any) -> Any:
    """TVM FFI containers → plain Python (dict, list, str, int, float)."""
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Iterable):
        return [_plain(v) for v in obj]
    return str(obj)


def _tvm_dict(target: Any) -> dict:
    if isinstance(target, Target):
        return dict(target.tvm)
    if isinstance(target, dict):
        return target
    if isinstance(target, str):
        from ..target import get_target

        return _tvm_dict(get_target(target))
    return _plain(target.export())  # tvm.target.Target


_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


@functools.lru_cache(maxsize=256)
def _signature_of(kind: str, triple: str, mcpu: str, mattr: tuple[str, ...], arch_opt: str) -> str:
    if kind == "cuda":
        return f"cuda/{arch_opt or '?'}"
    if kind != "llvm":
        return kind
    arch = _ARCH_ALIASES.get(triple.split("-", 1)[0], triple.split("-", 1)[0]) if triple else platform.machine()
    isa = ""
    if arch == "x86_64":
        import tvm
        from tvm.target import codegen

        d = {"kind": "llvm", "mtriple": triple or "x86_64-linux-gnu"}
        if mcpu:
            d["mcpu"] = mcpu
        if mattr:
            d["mattr"] = list(mattr)
        t = tvm.target.Target(d)
        isa = ("avx512" if codegen.llvm_cpu_has_features(["avx512f"], t)
               else "avx2" if codegen.llvm_cpu_has_features(["avx2", "fma"], t) else "sse")
    elif arch == "aarch64":
        isa = "sve" if any(a.lstrip("+") == "sve" for a in mattr) else "neon"
    return f"llvm/{arch}/{isa}"


def target_signature(target: Any) -> str:
    """What must match for a record measured on one target to be offered to another.

    ``kind/arch/vector ISA`` for CPUs (``llvm/x86_64/avx2``), ``cuda/sm_XX`` for GPUs: the schedule
    space (vector width, instruction set) is the same, only the exact CPU model and core count differ.
    A hwcomp :class:`Target`, a TVM target, a target dict (as stored in records) or a target name.
    """
    d = _tvm_dict(target)
    mattr = d.get("mattr") or ()
    if isinstance(mattr, str):
        mattr = tuple(mattr.split(","))
    return _signature_of(str(d.get("kind", "")), str(d.get("mtriple", "") or ""), str(d.get("mcpu", "") or ""),
                         tuple(str(a) for a in mattr), str(d.get("arch", "") or ""))


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
    meta = {"format": 1, "target": target.name, "signature": target_signature(target),
            "tvm": _tvm_dict(target)}
    _atomic_write(p, json.dumps(meta, indent=2) + "\n")


def database_signature(directory: str | Path) -> str | None:
    meta = read_meta(directory)
    return str(meta["signature"]) if meta and "signature" in meta else None


# ----------------------------------------------------------------------------- validation


@dataclasses.dataclass
class Issue:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclasses.dataclass
class ValidationReport:
    """What :func:`validate_database` found and did.

    ``usable_dir`` is the directory to open: the validated one, or a cleaned copy in the cache when
    the original is not writable (e.g. records installed with the package).
    """

    directory: Path
    usable_dir: Path
    signature: str | None = None
    workloads: int = 0
    records: int = 0
    knobs: int = 0
    issues: list[Issue] = dataclasses.field(default_factory=list)
    rewritten: list[Path] = dataclasses.field(default_factory=list)
    backups: list[Path] = dataclasses.field(default_factory=list)
    checked_lines: int = 0  # lines TVM parsed this time (the rest were checked before)

    @property
    def ok(self) -> bool:
        return not self.issues

    def summary(self) -> str:
        s = (f"{self.directory}: {self.workloads} workloads, {self.records} records, {self.knobs} knob entries"
             + (f" for {self.signature}" if self.signature else ""))
        if self.issues:
            s += f"; skipped {len(self.issues)} bad line(s)"
        if self.backups:
            s += "; originals kept as " + ", ".join(p.name for p in self.backups)
        if self.usable_dir != self.directory:
            s += f"; cleaned copy in {self.usable_dir}"
        return s


@dataclasses.dataclass
class _Content:
    """The valid part of a database directory, as text lines (what gets written back)."""

    workload_lines: list[str]  # deduplicated, in order
    workload_hashes: list[str]
    record_lines: list[str]  # workload indices refer to ``workload_lines``
    knob_lines: list[str]
    issues: list[Issue]
    changed: set[str]  # files whose valid content differs from what is on disk
    signature: str | None
    checked_lines: int = 0


def _read_lines(path: Path) -> tuple[list[str], bool]:
    """Lines of a text file (without newlines) and whether it ended with a newline."""
    if not path.is_file():
        return [], True
    data = path.read_bytes()
    if not data:
        return [], True
    text = data.decode("utf-8", errors="replace")
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), (not data or data.endswith(b"\n"))


def _stamp_path(directory: Path) -> Path:
    key = hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "db-checked" / f"{key}.json"


def _prefix_digest(path: Path, nbytes: int) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read(nbytes)
    except OSError:
        return None
    return hashlib.sha256(data).hexdigest() if len(data) == nbytes else None


def _checked_lines(directory: Path, name: str, signature: str | None) -> int:
    """How many leading lines of ``name`` an earlier validation already checked with TVM."""
    try:
        stamp = json.loads(_stamp_path(directory).read_text())
        entry = stamp["files"][name]
        if stamp.get("signature") != signature:
            return 0
        if _prefix_digest(directory / name, int(entry["bytes"])) == entry["sha256"]:
            return int(entry["lines"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return 0


def _write_stamp(directory: Path, signature: str | None) -> None:
    files = {}
    for name in DATA_FILES:
        p = directory / name
        if p.is_file():
            data = p.read_bytes()
            files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                           "lines": data.count(b"\n")}
    sp = _stamp_path(directory)
    with contextlib.suppress(OSError):
        sp.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(sp, json.dumps({"directory": str(directory.resolve()), "signature": signature,
                                      "files": files}) + "\n")


_MASK64 = (1 << 64) - 1


def _hash_str(mod) -> str:
    import tvm_ffi

    return str(tvm_ffi.structural_hash(mod) & _MASK64)


def _check_run_secs(secs: Any) -> None:
    if secs is not None and not (isinstance(secs, list) and all(isinstance(s, (int, float)) for s in secs)):
        raise ValueError("run_secs is not a list of numbers")


def _bad_line_reason(e: ValueError) -> str:
    return "truncated or invalid JSON" if isinstance(e, json.JSONDecodeError) else str(e)


def _scan(directory: Path, want: str | None, deep: bool = True) -> _Content:
    """Parse and check every line; return the valid content and the issues."""
    from tvm.s_tir import meta_schedule as ms

    issues: list[Issue] = []
    changed: set[str] = set()
    checked = 0

    # ---- workloads
    wl_path = directory / WORKLOADS
    lines, newline_ok = _read_lines(wl_path)
    if not newline_ok:
        changed.add(WORKLOADS)
    skip_deep = _checked_lines(directory, WORKLOADS, want) if deep else len(lines)
    index_map: dict[int, int] = {}  # old line index → new index (valid workloads only)
    wl_lines: list[str] = []
    wl_hashes: list[str] = []
    wl_objs: dict[int, Any] = {}  # new index → decoded Workload (lazily)
    wl_json: list[Any] = []
    wl_origin: list[int] = []  # new index → line number in the file
    seen: dict[str, int] = {}
    n_wl_lines = len(lines)
    for i, text in enumerate(lines):
        where = (WORKLOADS, i + 1)
        try:
            obj = json.loads(text)
            if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(v, str) for v in obj)):
                raise ValueError("not a [hash, module] workload entry")
        except ValueError as e:
            reason = _bad_line_reason(e)
            issues.append(Issue(*where, reason))
            changed.add(WORKLOADS)
            continue
        shash = obj[0]
        if deep and i >= skip_deep:
            checked += 1
            try:
                wl = ms.database.Workload.from_json(obj)
            except Exception as e:  # noqa: BLE001 - TVM raises several error types
                issues.append(Issue(*where, f"workload does not decode ({_first_line(e)})"))
                changed.add(WORKLOADS)
                continue
            real = _hash_str(wl.mod)
            if real != shash:
                issues.append(Issue(*where, f"workload hash {shash} does not match its module ({real}); fixed"))
                obj = [real, obj[1]]
                text = json.dumps(obj, separators=(",", ":"))
                shash = real
                changed.add(WORKLOADS)
        if shash in seen:
            index_map[i] = seen[shash]
            issues.append(Issue(*where, f"duplicate of workload line {wl_origin[seen[shash]]}; merged"))
            changed.add(WORKLOADS)
            continue
        new = len(wl_lines)
        seen[shash] = new
        index_map[i] = new
        wl_lines.append(text)
        wl_hashes.append(shash)
        wl_json.append(obj)
        wl_origin.append(i + 1)
    if index_map and any(old != new for old, new in index_map.items()):
        changed.add(RECORDS)  # indices must be rewritten

    def workload(new_index: int):
        if new_index not in wl_objs:
            wl = ms.database.Workload.from_json(wl_json[new_index])
            args = [_plain(a.as_json()) for a in ms.arg_info.ArgInfo.from_entry_func(wl.mod, remove_preproc=True)]
            wl_objs[new_index] = (wl, args)
        return wl_objs[new_index]

    # ---- records
    rec_path = directory / RECORDS
    lines, newline_ok = _read_lines(rec_path)
    if not newline_ok:
        changed.add(RECORDS)
    skip_deep = _checked_lines(directory, RECORDS, want) if deep and RECORDS not in changed else (0 if deep else len(lines))
    parsed: list[tuple[int, int, list, str | None, str]] = []  # (line, new wl index, record, signature, text)
    for i, text in enumerate(lines):
        where = (RECORDS, i + 1)
        try:
            obj = json.loads(text)
            if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[1], list) and len(obj[1]) == 4):
                raise ValueError("not a [workload index, record] entry")
            idx = obj[0]
            if not isinstance(idx, int) or isinstance(idx, bool):
                raise ValueError(f"workload index {idx!r} is not an integer")
            secs = obj[1][1]
            _check_run_secs(secs)
        except ValueError as e:
            reason = _bad_line_reason(e)
            issues.append(Issue(*where, reason))
            changed.add(RECORDS)
            continue
        if idx not in index_map:
            issues.append(Issue(*where, f"refers to workload #{idx}, which "
                                + ("is corrupt" if 0 <= idx < n_wl_lines else "does not exist")))
            changed.add(RECORDS)
            continue
        tgt = obj[1][2]
        sig = None
        if isinstance(tgt, dict):
            try:
                sig = target_signature(tgt)
            except Exception as e:  # noqa: BLE001
                issues.append(Issue(*where, f"unreadable target ({_first_line(e)})"))
                changed.add(RECORDS)
                continue
        parsed.append((i + 1, index_map[idx], obj, sig, text))

    if want is None:  # no declared target: the most common one is the database's
        sigs = [p[3] for p in parsed if p[3]]
        want = max(set(sigs), key=sigs.count) if sigs else None
    rec_lines: list[str] = []
    for lineno, new_idx, obj, sig, text in parsed:
        where = (RECORDS, lineno)
        if want is not None and sig is not None and sig != want:
            issues.append(Issue(*where, f"record for another target ({sig}; this database is for {want})"))
            changed.add(RECORDS)
            continue
        if deep and lineno > skip_deep:
            checked += 1
            try:
                wl, args = workload(new_idx)
                if obj[1][3] is not None and _plain(obj[1][3]) != args:
                    raise ValueError("its argument shapes are not the workload's")
                ms.database.TuningRecord.from_json(obj[1], wl)
            except Exception as e:  # noqa: BLE001
                issues.append(Issue(*where, f"does not belong to workload #{obj[0]} ({_first_line(e)})"))
                changed.add(RECORDS)
                continue
        if obj[0] != new_idx:
            obj = [new_idx, obj[1]]
            text = json.dumps(obj, separators=(",", ":"))
        rec_lines.append(text)

    # ---- hwcomp knobs
    lines, newline_ok = _read_lines(directory / KNOBS)
    if not newline_ok:
        changed.add(KNOBS)
    knob_lines: list[str] = []
    for i, text in enumerate(lines):
        where = (KNOBS, i + 1)
        try:
            obj = json.loads(text)
            if not (isinstance(obj, dict) and isinstance(obj.get("workload"), str) and isinstance(obj.get("knobs"), dict)
                    and isinstance(obj.get("kernel"), str)):
                raise ValueError("not a knob entry (needs workload, kernel, knobs)")
            secs = obj.get("run_secs")
            _check_run_secs(secs)
        except ValueError as e:
            reason = _bad_line_reason(e)
            issues.append(Issue(*where, reason))
            changed.add(KNOBS)
            continue
        sig = obj.get("signature")
        if want is not None and sig is not None and sig != want:
            issues.append(Issue(*where, f"knobs for another target ({sig}; this database is for {want})"))
            changed.add(KNOBS)
            continue
        knob_lines.append(text)
    order = {WORKLOADS: 0, RECORDS: 1, KNOBS: 2}
    issues.sort(key=lambda i: (order.get(i.file, 3), i.line))
    return _Content(wl_lines, wl_hashes, rec_lines, knob_lines, issues, changed, want, checked)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    msg = next((ln for ln in reversed(lines) if "Error" in ln or "Check failed" in ln), lines[-1] if lines else "")
    return f"{type(e).__name__}: {msg[:160]}"


def _atomic_write(path: Path, text: str) -> None:
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


def _backup_name(path: Path) -> Path:
    bak = path.with_name(path.name + ".bak")
    n = 1
    while bak.exists():
        bak = path.with_name(f"{path.name}.bak{n}")
        n += 1
    return bak


def _writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK) and all(
        os.access(directory / n, os.W_OK) for n in DATA_FILES if (directory / n).exists())


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive advisory lock on the directory while it is checked and rewritten."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        lock = _stamp_path(directory).with_suffix(".lock")  # in the cache: keeps the directory clean
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


def _lines_text(lines: list[str]) -> str:
    return "".join(ln + "\n" for ln in lines)


def validate_database(directory: str | Path, target: Any = None, *, deep: bool = True, rewrite: bool = True,
                      warn: bool = True) -> ValidationReport:
    """Check every line of a database directory; drop what MetaSchedule must not load.

    Skipped (each reported as a :class:`TuningDatabaseWarning` naming file and line): lines that are
    not valid JSON (a tuner killed mid-write), records whose workload index does not exist or whose
    workload is corrupt, workloads that do not decode, records whose schedule does not apply to their
    workload (``deep``), and records measured on another target (a different
    :func:`target_signature` than ``target``, else than the directory's ``hwcomp_db.json``, else
    than most of its records). Duplicate workloads are merged and indices renumbered.

    With ``rewrite``, each file that changed is replaced by its cleaned version and the original is
    kept next to it as ``<file>.bak``; nothing valid is dropped. A directory that is not writable
    gets its cleaned copy in the user cache (``report.usable_dir``).
    """
    directory = Path(directory)
    want = target_signature(target) if target is not None else database_signature(directory)
    report = ValidationReport(directory=directory, usable_dir=directory, signature=want)
    if not directory.is_dir():
        return report
    with _locked(directory) if _writable(directory) else contextlib.nullcontext():
        content = _scan(directory, want, deep=deep)
        report.signature = content.signature
        report.workloads, report.records, report.knobs = (len(content.workload_lines), len(content.record_lines),
                                                          len(content.knob_lines))
        report.issues = content.issues
        report.checked_lines = content.checked_lines
        if warn:
            for issue in content.issues:
                warnings.warn(f"tuning database {directory / issue.file}:{issue.line}: {issue.reason}; skipped",
                              TuningDatabaseWarning, stacklevel=2)
        if not rewrite:
            return report
        texts = {WORKLOADS: content.workload_lines, RECORDS: content.record_lines, KNOBS: content.knob_lines}
        if content.changed and not _writable(directory):
            copy = cache_root() / "db-cleaned" / hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:16]
            copy.mkdir(parents=True, exist_ok=True)
            for name, lines in texts.items():
                _atomic_write(copy / name, _lines_text(lines))
            if (directory / META).is_file():
                shutil.copyfile(directory / META, copy / META)
            report.usable_dir = copy
            report.rewritten = [copy / n for n in texts]
            _write_stamp(copy, want)
            return report
        for name in sorted(content.changed):
            path = directory / name
            if path.exists():
                bak = _backup_name(path)
                shutil.copy2(path, bak)
                report.backups.append(bak)
            _atomic_write(path, _lines_text(texts[name]))
            report.rewritten.append(path)
        if deep:
            _write_stamp(directory, want)
    return report


def open_database(directory: str | Path, target: Any = None, validate: bool = True):
    """Open (creating if needed) a MetaSchedule JSON database in ``directory``, validated first."""
    from tvm.s_tir import meta_schedule as ms

    directory = Path(directory)
    if not directory.exists():
        directory.mkdir(parents=True, exist_ok=True)
    if validate:
        directory = validate_database(directory, target).usable_dir
    return ms.database.JSONDatabase(path_workload=str(directory / WORKLOADS),
                                    path_tuning_record=str(directory / RECORDS))


# ----------------------------------------------------------------------------- statistics


@dataclasses.dataclass
class WorkloadStats:
    """Records of one workload in a database: how many were measured, how many failed, the best."""

    trials: int = 0
    failed: int = 0
    best_secs: float | None = None

    def add(self, secs: list[float] | None) -> None:
        self.trials += 1
        if not secs or min(secs) >= FAILED_SECS:
            self.failed += 1
            return
        mean = sum(secs) / len(secs)
        if self.best_secs is None or mean < self.best_secs:
            self.best_secs = mean


def workload_stats(directory: str | Path) -> dict[str, WorkloadStats]:
    """Per workload hash: the MetaSchedule records of a (validated) database directory."""
    directory = Path(directory)
    hashes = []
    for text in _read_lines(directory / WORKLOADS)[0]:
        try:
            hashes.append(json.loads(text)[0])
        except (ValueError, IndexError, TypeError):
            hashes.append(None)
    stats: dict[str, WorkloadStats] = {}
    for text in _read_lines(directory / RECORDS)[0]:
        try:
            idx, rec = json.loads(text)
            shash = hashes[idx]
        except (ValueError, IndexError, TypeError):
            continue
        if shash is not None:
            stats.setdefault(shash, WorkloadStats()).add(rec[1])
    return stats


# ----------------------------------------------------------------------------- export / import / merge


@dataclasses.dataclass
class ImportReport:
    source: str
    destination: Path
    workloads_added: int = 0
    records_added: int = 0
    knobs_added: int = 0
    measurements_added: int = 0
    duplicates: int = 0
    foreign: int = 0
    skipped_bad: int = 0

    def summary(self) -> str:
        s = (f"{self.source} → {self.destination}: +{self.records_added} records, +{self.workloads_added} workloads, "
             f"+{self.knobs_added} knob entries, +{self.measurements_added} measured latencies")
        extras = [f"{self.duplicates} already present"] if self.duplicates else []
        if self.foreign:
            extras.append(f"{self.foreign} for another target skipped")
        if self.skipped_bad:
            extras.append(f"{self.skipped_bad} bad lines skipped")
        return s + (f" ({', '.join(extras)})" if extras else "")


MAX_IMPORT_BYTES = 4 << 30


@contextlib.contextmanager
def _as_directory(source: str | Path):
    """A database directory, or a ``.tar.gz`` archive of one (unpacked into a temporary directory)."""
    source = Path(source)
    if source.is_dir():
        yield source
        return
    if not source.is_file():
        raise FileNotFoundError(f"no tuning database at {source}")
    with tempfile.TemporaryDirectory(prefix="hwcomp-db-") as tmp:
        with tarfile.open(source) as tar:
            # Only the database's own files, and a cap on what they may extract to (a small
            # .tar.gz can expand to gigabytes).
            names = {*DATA_FILES, *MEASUREMENT_FILES, META}
            members = [m for m in tar.getmembers() if m.isreg() and Path(m.name).name in names]
            if sum(m.size for m in members) > MAX_IMPORT_BYTES:
                raise ValueError(f"{source} would extract to more than {MAX_IMPORT_BYTES} bytes")
            tar.extractall(tmp, members=members, filter="data")
        found = [p.parent for p in Path(tmp).rglob(WORKLOADS)] or [p.parent for p in Path(tmp).rglob(KNOBS)]
        if not found:
            raise ValueError(f"{source} holds no {WORKLOADS}")
        yield found[0]


def _record_key(shash: str, rec_line: str) -> str:
    rec = json.loads(rec_line)[1]
    return shash + json.dumps(rec[0], separators=(",", ":"))


def import_database(source: str | Path, destination: str | Path, target: Any = None, *, retarget: bool = True,
                    force: bool = False, top_k: int | None = None) -> ImportReport:
    """Add the valid records of ``source`` (a directory or ``.tar.gz``) to ``destination``.

    Only records for the destination's target signature are taken (``force``: all of them). With
    ``retarget`` the records are rewritten to carry the destination's target (MetaSchedule ignores
    the target when it applies a record; hwcomp's checks read it). Records already present (same
    workload and schedule) are not duplicated. ``top_k``: only the best ``k`` records per workload.
    """
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    if target is not None and isinstance(target, Target):
        write_meta(destination, target)
    dest_sig = target_signature(target) if target is not None else database_signature(destination)
    dest_tvm = _tvm_dict(target) if target is not None else (read_meta(destination) or {}).get("tvm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningDatabaseWarning)
        validate_database(destination, target)
    dest = _scan(destination, dest_sig, deep=False)
    report = ImportReport(str(source), destination)
    with _as_directory(source) as src_dir:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TuningDatabaseWarning)
            src = _scan(src_dir, database_signature(src_dir), deep=True)
            if dest_sig is None:
                dest_sig = src.signature
        report.skipped_bad = len([i for i in src.issues if "another target" not in i.reason])
        dest_index = {h: i for i, h in enumerate(dest.workload_hashes)}
        present = {_record_key(dest.workload_hashes[json.loads(t)[0]], t) for t in dest.record_lines}
        new_wl: list[str] = []
        new_rec: list[str] = []
        chosen = src.record_lines
        if top_k is not None:
            chosen = _top_k_lines(src.record_lines, top_k)
        for text in chosen:
            idx, rec = json.loads(text)
            shash = src.workload_hashes[idx]
            sig = target_signature(rec[2]) if isinstance(rec[2], dict) else None
            if not force and dest_sig is not None and sig is not None and sig != dest_sig:
                report.foreign += 1
                continue
            key = _record_key(shash, text)
            if key in present:
                report.duplicates += 1
                continue
            if shash not in dest_index:
                dest_index[shash] = len(dest.workload_hashes) + len(new_wl)
                new_wl.append(src.workload_lines[idx])
            if retarget and dest_tvm:
                rec = [rec[0], rec[1], dest_tvm, rec[3]]
            new_rec.append(json.dumps([dest_index[shash], rec], separators=(",", ":")))
            present.add(key)
        present_knobs = {_knob_key(t) for t in dest.knob_lines}
        new_knobs = []
        for text in src.knob_lines:
            obj = json.loads(text)
            if not force and dest_sig and obj.get("signature") not in (None, dest_sig):
                report.foreign += 1
                continue
            if retarget and dest_sig:
                obj["signature"] = dest_sig
            key = _knob_key(json.dumps(obj))
            if key in present_knobs:
                report.duplicates += 1
                continue
            present_knobs.add(key)
            new_knobs.append(json.dumps(obj, separators=(",", ":")))
        same_target = force or dest_sig is None or database_signature(src_dir) in (None, dest_sig)
        measured = {name: _read_measurements(src_dir / name, report) for name in MEASUREMENT_FILES} \
            if same_target else {}
        if not same_target:
            report.foreign += sum(len(_read_measurements(src_dir / n, report)) for n in MEASUREMENT_FILES)
    with _locked(destination):
        for name, lines in ((WORKLOADS, new_wl), (RECORDS, new_rec), (KNOBS, new_knobs)):
            if lines:
                with open(destination / name, "a") as f:
                    f.write(_lines_text(lines))
        for name, entries in measured.items():
            report.measurements_added += _merge_measurements(destination / name, entries, report)
    report.workloads_added, report.records_added, report.knobs_added = len(new_wl), len(new_rec), len(new_knobs)
    if dest_sig and not (destination / META).exists() and dest_tvm:
        _atomic_write(destination / META, json.dumps({"format": 1, "signature": dest_sig, "tvm": dest_tvm},
                                                     indent=2) + "\n")
    return report


def json_object(text: str) -> dict:
    """``text`` parsed as one JSON object; ValueError for anything else (torn, edited, a list)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _read_measurements(path: Path, report: ImportReport | None = None) -> dict[str, Any]:
    """``key → entry`` of a measurement file (a JSON object, or JSON lines with a ``key``); a
    damaged file or line is counted in ``report.skipped_bad`` and left out."""
    if not path.is_file():
        return {}
    text = path.read_text()
    if path.name == BSR_CHOICES:
        try:
            return json_object(text)
        except ValueError as e:
            warnings.warn(f"{path}: corrupt measurement file ({e}); not imported", TuningDatabaseWarning,
                          stacklevel=3)
            if report is not None:
                report.skipped_bad += 1
            return {}
    out = {}
    for line in text.splitlines():
        try:
            obj = json.loads(line)
            out[str(obj["key"])] = obj
        except (ValueError, KeyError, TypeError):
            if line.strip() and report is not None:
                report.skipped_bad += 1
    return out


def _merge_measurements(path: Path, entries: dict[str, Any], report: ImportReport) -> int:
    """Add the ``entries`` whose key ``path`` lacks; returns how many were added."""
    have = _read_measurements(path)
    new = {k: v for k, v in entries.items() if k not in have}
    report.duplicates += len(entries) - len(new)
    if not new:
        return 0
    if path.name == BSR_CHOICES:
        _atomic_write(path, json.dumps({**have, **new}, indent=1, sort_keys=True) + "\n")
    else:
        with open(path, "a") as f:
            f.write(_lines_text([json.dumps(v, separators=(",", ":")) for v in new.values()]))
    return len(new)


def _knob_key(text: str) -> str:
    obj = json.loads(text)
    return json.dumps([obj.get("workload"), obj.get("kernel"), obj.get("knobs")], sort_keys=True)


def _top_k_lines(record_lines: list[str], k: int) -> list[str]:
    by_wl: dict[int, list[tuple[float, str]]] = {}
    for text in record_lines:
        idx, rec = json.loads(text)
        secs = rec[1]
        if not secs or min(secs) >= FAILED_SECS:
            continue
        by_wl.setdefault(idx, []).append((sum(secs) / len(secs), text))
    out = []
    for _, items in sorted(by_wl.items()):
        out += [t for _, t in sorted(items, key=lambda x: x[0])[:k]]
    return out


def export_database(source: str | Path, output: str | Path, *, top_k: int | None = None) -> Path:
    """Write a validated (and with ``top_k``, pruned) copy of a database as a directory or ``.tar.gz``."""
    source, output = Path(source), Path(output)
    with tempfile.TemporaryDirectory(prefix="hwcomp-db-export-") as tmp:
        out_dir = Path(tmp) / "records"
        out_dir.mkdir()
        if (source / META).is_file():
            shutil.copyfile(source / META, out_dir / META)
        (out_dir / WORKLOADS).write_text("")
        (out_dir / RECORDS).write_text("")
        # An import into an empty directory renumbers, deduplicates and prunes in one place.
        import_database(source, out_dir, retarget=False, top_k=top_k)
        _drop_unused_workloads(out_dir)
        if output.name.endswith((".tar.gz", ".tgz")):
            output.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(output, "w:gz") as tar:
                for p in sorted(out_dir.iterdir()):
                    if p.name in (*DATA_FILES, *MEASUREMENT_FILES, META):
                        tar.add(p, arcname=f"records/{p.name}")
        else:
            output.mkdir(parents=True, exist_ok=True)
            for p in out_dir.iterdir():
                if p.name in (*DATA_FILES, *MEASUREMENT_FILES, META):
                    shutil.copyfile(p, output / p.name)
    return output


def _drop_unused_workloads(directory: Path) -> None:
    """Remove workloads no record refers to (after pruning) and renumber the records."""
    wl_lines = _read_lines(directory / WORKLOADS)[0]
    rec_lines = _read_lines(directory / RECORDS)[0]
    used = sorted({json.loads(t)[0] for t in rec_lines})
    if len(used) == len(wl_lines):
        return
    remap = {old: new for new, old in enumerate(used)}
    _atomic_write(directory / WORKLOADS, _lines_text([wl_lines[i] for i in used]))
    out = []
    for t in rec_lines:
        idx, rec = json.loads(t)
        out.append(json.dumps([remap[idx], rec], separators=(",", ":")))
    _atomic_write(directory / RECORDS, _lines_text(out))


def select_workloads(source: str | Path, destination: str | Path, keep: Callable[[str], bool]) -> int:
    """Write the workloads of ``source`` whose hash passes ``keep``, with their records and knob
    entries, as a new database in ``destination`` (meta file copied). Returns the records written."""
    source, destination = Path(source), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    wl_lines = _read_lines(source / WORKLOADS)[0]
    kept = [i for i, t in enumerate(wl_lines) if keep(json.loads(t)[0])]
    remap = {old: new for new, old in enumerate(kept)}
    records = []
    for t in _read_lines(source / RECORDS)[0]:
        idx, rec = json.loads(t)
        if idx in remap:
            records.append(json.dumps([remap[idx], rec], separators=(",", ":")))
    _atomic_write(destination / WORKLOADS, _lines_text([wl_lines[i] for i in kept]))
    _atomic_write(destination / RECORDS, _lines_text(records))
    knobs = [t for t in _read_lines(source / KNOBS)[0] if keep(json.loads(t).get("workload", ""))]
    _atomic_write(destination / KNOBS, _lines_text(knobs))
    if (source / META).is_file():
        shutil.copyfile(source / META, destination / META)
    return len(records)


def merge_databases(sources: list[str | Path], destination: str | Path, target: Any = None) -> list[ImportReport]:
    """Import several databases (directories or archives) into one."""
    return [import_database(s, destination, target, retarget=target is not None) for s in sources]


def seed_from_shipped(directory: Path, target: Target, log=None) -> ImportReport | None:
    """Start a new user database from the compatible shipped records (tuning then continues from them)."""
    if has_records(directory):
        return None
    shipped = compatible_shipped_dir(target)
    if shipped is None:
        return None
    rep = import_database(shipped, directory, target, retarget=True)
    if log and rep.records_added:
        log(f"seeded {directory} with {rep.records_added} shipped records from {shipped}")
    return rep
