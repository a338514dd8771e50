"""Validating a database directory before MetaSchedule opens it.

MetaSchedule's ``JSONDatabase`` aborts the whole load on one bad line (a truncated line from a
killed tuner, a record whose workload index is out of range, a trace that does not apply), and
its lookup ignores the target a record was measured on. So every open goes through
:func:`validate_database` first: bad and foreign lines are reported (a warning naming file and line)
and dropped from a rewritten copy, the original kept as ``*.bak``. Validation is incremental: the
part of each file that was already checked is remembered (by size and hash) and not re-parsed by TVM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from ..errors import error_line
from .formats import (
    bad_line_reason,
    parse_knob_line,
    parse_record_line,
    parse_workload_line,
    workload_key,
)
from .locations import (
    DATA_FILES,
    KNOBS,
    META,
    RECORDS,
    WORKLOADS,
    cache_root,
    plain,
    target_signature,
)
from .store import (
    TuningDatabaseWarning,
    atomic_write,
    backup_name,
    database_signature,
    lines_text,
    locked,
    path_key,
    read_lines,
    writable,
)


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
class DatabaseContent:
    """The valid part of a database directory, as text lines (what gets written back)."""

    workload_lines: list[str]  # deduplicated, in order
    workload_hashes: list[str]
    record_lines: list[str]  # workload indices refer to ``workload_lines``
    knob_lines: list[str]
    issues: list[Issue]
    changed: set[str]  # files whose valid content differs from what is on disk
    signature: str | None
    checked_lines: int = 0


# ----------------------------------------------------------------------------- incremental checks


def _stamp_path(directory: Path) -> Path:
    return cache_root() / "db-checked" / f"{path_key(directory)}.json"


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
        atomic_write(sp, json.dumps({"directory": str(directory.resolve()), "signature": signature,
                                     "files": files}) + "\n")


# ----------------------------------------------------------------------------- scan


def scan(directory: Path, want: str | None, deep: bool = True) -> DatabaseContent:
    """Parse and check every line; return the valid content and the issues."""
    from tvm.s_tir import meta_schedule as ms

    issues: list[Issue] = []
    changed: set[str] = set()
    checked = 0

    # ---- workloads
    lines, newline_ok = read_lines(directory / WORKLOADS)
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
            obj = parse_workload_line(text)
        except ValueError as e:
            issues.append(Issue(*where, bad_line_reason(e)))
            changed.add(WORKLOADS)
            continue
        shash = obj[0]
        if deep and i >= skip_deep:
            checked += 1
            try:
                wl = ms.database.Workload.from_json(obj)
            except Exception as e:  # noqa: BLE001 - TVM raises several error types
                issues.append(Issue(*where, f"workload does not decode ({error_line(e, with_type=True, limit=160)})"))
                changed.add(WORKLOADS)
                continue
            real = workload_key(wl.mod)
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
            args = [plain(a.as_json()) for a in ms.arg_info.ArgInfo.from_entry_func(wl.mod, remove_preproc=True)]
            wl_objs[new_index] = (wl, args)
        return wl_objs[new_index]

    # ---- records
    lines, newline_ok = read_lines(directory / RECORDS)
    if not newline_ok:
        changed.add(RECORDS)
    skip_deep = _checked_lines(directory, RECORDS, want) if deep and RECORDS not in changed else (0 if deep else len(lines))
    parsed: list[tuple[int, int, list, str | None, str]] = []  # (line, new wl index, record, signature, text)
    for i, text in enumerate(lines):
        where = (RECORDS, i + 1)
        try:
            obj = parse_record_line(text)
        except ValueError as e:
            issues.append(Issue(*where, bad_line_reason(e)))
            changed.add(RECORDS)
            continue
        idx = obj[0]
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
                issues.append(Issue(*where, f"unreadable target ({error_line(e, with_type=True, limit=160)})"))
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
                if obj[1][3] is not None and plain(obj[1][3]) != args:
                    raise ValueError("its argument shapes are not the workload's")
                ms.database.TuningRecord.from_json(obj[1], wl)
            except Exception as e:  # noqa: BLE001
                issues.append(Issue(*where, f"does not belong to workload #{obj[0]} ({error_line(e, with_type=True, limit=160)})"))
                changed.add(RECORDS)
                continue
        if obj[0] != new_idx:
            obj = [new_idx, obj[1]]
            text = json.dumps(obj, separators=(",", ":"))
        rec_lines.append(text)

    # ---- hwcomp knobs
    lines, newline_ok = read_lines(directory / KNOBS)
    if not newline_ok:
        changed.add(KNOBS)
    knob_lines: list[str] = []
    for i, text in enumerate(lines):
        where = (KNOBS, i + 1)
        try:
            obj = parse_knob_line(text)
        except ValueError as e:
            issues.append(Issue(*where, bad_line_reason(e)))
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
    return DatabaseContent(wl_lines, wl_hashes, rec_lines, knob_lines, issues, changed, want, checked)


# ----------------------------------------------------------------------------- validate and open


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
    with locked(directory) if writable(directory) else contextlib.nullcontext():
        content = scan(directory, want, deep=deep)
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
        if content.changed and not writable(directory):
            copy = cache_root() / "db-cleaned" / path_key(directory)
            copy.mkdir(parents=True, exist_ok=True)
            for name, lines in texts.items():
                atomic_write(copy / name, lines_text(lines))
            if (directory / META).is_file():
                shutil.copyfile(directory / META, copy / META)
            report.usable_dir = copy
            report.rewritten = [copy / n for n in texts]
            _write_stamp(copy, want)
            return report
        for name in sorted(content.changed):
            path = directory / name
            if path.exists():
                bak = backup_name(path)
                shutil.copy2(path, bak)
                report.backups.append(bak)
            atomic_write(path, lines_text(texts[name]))
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
