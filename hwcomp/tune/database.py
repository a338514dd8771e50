"""Moving tuning databases: export, import and merge (directories or ``.tar.gz`` archives), selecting
workloads, and seeding a new user database from the shipped records.

Reading, checking and writing the files themselves is :mod:`hwcomp.records` (locations, formats,
validation, the keyed measurement store); the names below from there are re-exported for callers of
the old ``hwcomp.tune.database``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tarfile
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..records.formats import FAILED_SECS, knob_key, record_key
from ..records.locations import (
    DATA_FILES,
    KNOBS,
    MEASUREMENT_FILES,
    META,
    RECORDS,
    WORKLOADS,
    compatible_shipped_dir,
    has_records,
    target_signature,
    tvm_dict,
)
from ..records.store import (
    MeasurementStore,
    TuningDatabaseWarning,
    append_lines,
    atomic_write,
    database_signature,
    lines_text,
    locked,
    note_cpus,
    read_lines,
    read_meta,
    tuned_on,
    write_meta,
)
from ..records.validate import scan, validate_database
from ..target import Target


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
    dest_tvm = tvm_dict(target) if target is not None else (read_meta(destination) or {}).get("tvm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningDatabaseWarning)
        validate_database(destination, target)
    dest = scan(destination, dest_sig, deep=False)
    report = ImportReport(str(source), destination)
    with _as_directory(source) as src_dir:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TuningDatabaseWarning)
            src = scan(src_dir, database_signature(src_dir), deep=True)
            src_cpus = tuned_on(src_dir)
            if dest_sig is None:
                dest_sig = src.signature
        report.skipped_bad = len([i for i in src.issues if "another target" not in i.reason])
        dest_index = {h: i for i, h in enumerate(dest.workload_hashes)}
        present = {record_key(dest.workload_hashes[json.loads(t)[0]], t) for t in dest.record_lines}
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
            key = record_key(shash, text)
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
        present_knobs = {knob_key(t) for t in dest.knob_lines}
        new_knobs = []
        for text in src.knob_lines:
            obj = json.loads(text)
            if not force and dest_sig and obj.get("signature") not in (None, dest_sig):
                report.foreign += 1
                continue
            if retarget and dest_sig:
                obj["signature"] = dest_sig
            key = knob_key(json.dumps(obj))
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
    with locked(destination):
        for name, lines in ((WORKLOADS, new_wl), (RECORDS, new_rec), (KNOBS, new_knobs)):
            append_lines(destination / name, lines)
        for name, entries in measured.items():
            added = MeasurementStore(destination / name).add(entries)
            report.duplicates += len(entries) - added
            report.measurements_added += added
    report.workloads_added, report.records_added, report.knobs_added = len(new_wl), len(new_rec), len(new_knobs)
    if dest_sig and not (destination / META).exists() and dest_tvm:
        atomic_write(destination / META, json.dumps({"format": 1, "signature": dest_sig, "tvm": dest_tvm},
                                                    indent=2) + "\n")
    if report.records_added or report.knobs_added or report.measurements_added:
        note_cpus(destination, src_cpus)  # where the imported measurements were made
    return report


def _read_measurements(path: Path, report: ImportReport) -> dict[str, Any]:
    """``key → entry`` of a source's measurement file; a damaged file or line is counted in
    ``report.skipped_bad`` and left out."""
    try:
        entries, bad = MeasurementStore(path).read()
    except ValueError as e:
        warnings.warn(f"{path}: corrupt measurement file ({e}); not imported", TuningDatabaseWarning, stacklevel=3)
        report.skipped_bad += 1
        return {}
    report.skipped_bad += bad
    return entries


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
    wl_lines = read_lines(directory / WORKLOADS)[0]
    rec_lines = read_lines(directory / RECORDS)[0]
    used = sorted({json.loads(t)[0] for t in rec_lines})
    if len(used) == len(wl_lines):
        return
    remap = {old: new for new, old in enumerate(used)}
    atomic_write(directory / WORKLOADS, lines_text([wl_lines[i] for i in used]))
    out = []
    for t in rec_lines:
        idx, rec = json.loads(t)
        out.append(json.dumps([remap[idx], rec], separators=(",", ":")))
    atomic_write(directory / RECORDS, lines_text(out))


def select_workloads(source: str | Path, destination: str | Path, keep: Callable[[str], bool]) -> int:
    """Write the workloads of ``source`` whose hash passes ``keep``, with their records and knob
    entries, as a new database in ``destination`` (meta file copied). Returns the records written."""
    source, destination = Path(source), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    wl_lines = read_lines(source / WORKLOADS)[0]
    kept = [i for i, t in enumerate(wl_lines) if keep(json.loads(t)[0])]
    remap = {old: new for new, old in enumerate(kept)}
    records = []
    for t in read_lines(source / RECORDS)[0]:
        idx, rec = json.loads(t)
        if idx in remap:
            records.append(json.dumps([remap[idx], rec], separators=(",", ":")))
    atomic_write(destination / WORKLOADS, lines_text([wl_lines[i] for i in kept]))
    atomic_write(destination / RECORDS, lines_text(records))
    knobs = [t for t in read_lines(source / KNOBS)[0] if keep(json.loads(t).get("workload", ""))]
    atomic_write(destination / KNOBS, lines_text(knobs))
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


# Re-exported for the callers of the old module (hwcomp/cli/tune.py, tests/tune/test_tuner.py);
# TuningDatabaseWarning, validate_database, read_meta and KNOBS, which they use too, are imported above.
from ..records.formats import workload_stats  # noqa: F401
from ..records.locations import default_database_dir, user_database_dir  # noqa: F401
from ..records.validate import open_database  # noqa: F401
